"""analysis.cache=true on a real traced tiny job (the cache and locality tables against a replay of its trace table),
`python -m runner.cache` on a run traced without it, and `python -m runner.compare --routing` of a run with itself,
with a perturbed copy, with the same blocks at another batch size and with runs of other inputs."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.caches import simulate_one
from helpers.jobs import run_job, table
from runner.results import cache_replay as cache
from runner.baseline import sweep_compare as compare
from runner import results
from runner.profiler import caching

SEQ, BATCH, BATCHES, DECODE = 16, 4, 2, 4
JOB = ("trace.enabled=true", f"seq_len={SEQ}", f"max_batches={BATCHES}", f"decode_tokens={DECODE}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    run_job(root / "cached", *JOB, f"batch_size={BATCH}", "analysis.cache=true")
    run_job(root / "plain", *JOB, f"batch_size={BATCH}")
    run_job(root / "single", "trace.enabled=true", f"seq_len={SEQ}", f"max_batches={BATCH * BATCHES}",
            f"decode_tokens={DECODE}", "batch_size=1")
    run_job(root / "other", "trace.enabled=true", f"seq_len={SEQ * 2}", "max_batches=1", "batch_size=2")
    return root


def test_the_cache_table_is_the_trace_replayed_in_serving_order(runs):
    trace, layers = table(runs / "cached", "trace"), table(runs / "cached", "layers")
    got = table(runs / "cached", "cache")
    experts = int(layers["num_experts"].iloc[0])
    assert len(got) == 2 * layers["layer"].nunique() * 3 * experts  # phases x layers x policies x capacities
    for (phase, layer), rows in trace.groupby(["phase", "layer"]):
        order = ["batch", "row", "position"] if phase == "prefill" else ["batch", "position", "row"]
        refs = np.concatenate(list(rows.sort_values(order)["experts"])).astype(int).tolist()
        mine = got[(got["phase"] == phase) & (got["layer"] == layer)]
        for policy in caching.POLICIES:
            line = mine[mine["policy"] == policy].sort_values("capacity")
            expected = [simulate_one(refs, c, policy) for c in (1, experts // 4, experts // 2, experts)]
            assert line.set_index("capacity").loc[[1, experts // 4, experts // 2, experts], "hits"].tolist() == expected
            assert (line["references"] == len(refs)).all() and (line["tokens"] == len(rows)).all()
        assert mine.loc[mine["capacity"] == experts, "hits"].eq(len(refs) - len(set(refs))).all()
    local = table(runs / "cached", "locality").set_index(["phase", "layer"])
    decode_pairs = BATCH * BATCHES * (DECODE - 2)  # DECODE - 1 decode steps traced per row
    assert (local.xs("decode")["pairs"] == decode_pairs).all()
    assert np.allclose(local["overlap_random"], 2 / experts)  # k / E, k = 2
    assert local["overlap"].between(0, 1).all()


def test_the_cache_command_writes_the_tables_of_a_run_traced_without_them(runs, capsys):
    assert table(runs / "plain", "cache").empty
    assert cache.main([str(runs / "plain" / "results")]) == 0
    out = capsys.readouterr().out
    assert "lru@E/4" in out and "opt@E/2" in out and "wrote" in out
    written = table(runs / "plain", "cache")
    cached = table(runs / "cached", "cache")
    key = ["phase", "layer", "policy", "capacity"]
    assert written.sort_values(key)["hits"].tolist() == cached.sort_values(key)["hits"].tolist()  # same blocks
    assert cache.main([str(runs / "plain" / "results")]) == 0  # a second pass writes nothing again
    assert len(table(runs / "plain", "cache")) == len(written) and "wrote" not in capsys.readouterr().out
    assert cache.main([str(runs / "other" / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_routing_diff_with_itself_another_batch_size_and_a_perturbed_copy(runs, tmp_path, capsys):
    plain, cached = (str(runs / name / "results") for name in ("plain", "cached"))
    assert compare.main([plain, cached, "--routing"]) == 0  # the same blocks and routing: agreement 1 everywhere
    out = capsys.readouterr().out
    assert "first diverging layer: prefill none, decode none" in out and "compare --routing OK" in out
    assert compare.main([plain, str(runs / "single" / "results"), "--routing", "--min-agreement", "0.95"]) == 0
    capsys.readouterr()
    # a copy whose trace has one prefill token of the last layer routed elsewhere
    copy = tmp_path / "perturbed"
    shutil.copytree(plain, copy)
    (part,) = (copy / "table=trace").rglob("*.parquet")
    data = pq.read_table(part).to_pandas()
    last = data["layer"].max()
    at = data.index[(data["phase"] == "prefill") & (data["layer"] == last)][5]
    data.at[at, "experts"] = np.array([e for e in range(8) if e not in set(data.at[at, "experts"])][:2], np.int16)
    # and sequence 0 generated another token at its second decode step: that step and the later ones are not compared
    other_input = (data["phase"] == "decode") & (data["batch"] == 0) & (data["row"] == 0) & (data["position"] == SEQ + 1)
    data.loc[other_input, "token_id"] += 1
    pq.write_table(results.to_arrow("trace", data.drop(columns="model", errors="ignore").to_dict("records")), part)
    assert compare.main([plain, str(copy), "--routing"]) == 1
    out = capsys.readouterr().out
    assert f"prefill {last}" in out and "FAIL" in out
    tokens = BATCH * BATCHES * SEQ
    assert f"{(tokens - 1) / tokens:.4f}" in out  # exact-set agreement of that layer
    table_rows = [line.split() for line in out.splitlines() if line.rstrip().endswith((" ok", " FAIL"))]
    decode_tokens = {int(r[-5].replace(",", "")) for r in table_rows if r[-7] == "decode"}  # phase, layer, tokens, ...
    assert decode_tokens == {BATCH * BATCHES * (DECODE - 1) - (DECODE - 2)}


def test_routing_diff_refuses_what_it_cannot_compare(runs, capsys):
    plain = str(runs / "plain" / "results")
    assert compare.main([plain, str(runs / "other" / "results"), "--routing"]) == 2  # other seq_len: no pair
    assert "same inputs" in capsys.readouterr().err
    assert compare.main([plain, plain, "--routing", "--min-agreement", "2"]) == 2
