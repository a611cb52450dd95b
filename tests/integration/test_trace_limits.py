"""The routing trace preallocates for the batches that exist, not for the batch size asked for: batch_size=2e9 on a
small dataset is one batch of every block, traced whole."""
from __future__ import annotations

from helpers.jobs import latest_run, run_job, table


def test_a_huge_batch_size_traces_the_blocks_that_exist(tmp_path):
    out = run_job(tmp_path, "trace.enabled=true", "batch_size=2000000000", "max_batches=1", "seq_len=32")
    assert out["status"] == "ok"
    trace = table(tmp_path, "trace")
    assert len(trace) == int(latest_run(tmp_path)["tokens"]) * 2  # every token of the 2 MoE layers
