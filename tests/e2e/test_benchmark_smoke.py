"""Smoke run of benchmarks/overhead.py (tiny OLMoE on CPU), in-process."""
from __future__ import annotations

import json
import math

import pandas as pd

from benchmarks import overhead


def test_overhead_smoke(tmp_path, capsys):
    results = overhead.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    printed = capsys.readouterr().out

    json_path, parquet_path = tmp_path / "overhead.json", tmp_path / "overhead.parquet"
    assert json_path.is_file() and parquet_path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind

    df = pd.read_parquet(parquet_path)
    data = json.loads(json_path.read_text())
    variants = list(overhead.VARIANTS)
    expected = {(v, p) for v in variants for p in overhead.PHASES}
    assert set(zip(df["variant"], df["phase"])) == expected and len(df) == len(expected)
    assert len(data["results"]) == len(expected)

    for ratio in df["ratio_to_bare"]:
        assert math.isfinite(ratio) and ratio > 0
    assert (df[df["variant"] == "bare"]["ratio_to_bare"] == 1.0).all()
    assert (df["median_ms"] > 0).all() and (df["n"] == 2).all()

    meta = data["meta"]
    for key in ("device_name", "torch_version", "transformers_version", "date"):
        assert meta[key]

    memory = data["memory_check"]
    assert memory["independent"] is True
    small, large = memory["recorder"]["points"]
    assert (small["tokens_seen"], large["tokens_seen"]) == (1_000, 100_000)
    assert small["buffer_bytes"] == large["buffer_bytes"] > 0

    kneedle = df[df["variant"] == "kneedle"]
    assert ((kneedle["k_mean"] >= 1) & (kneedle["k_mean"] <= 8)).all()
    for phase in overhead.PHASES:
        assert 1 <= data["kneedle"][phase]["k_mean"] <= 8
    assert "eager_over_grouped_mm" in data["experts_implementation"]
    assert data["sync_check"]["checked"] is False  # CPU: nothing to check, and it says so
    assert data["compiled"]["run"] is False and "compiled/static-cache variants skipped" in printed

    # the table was printed, and the model is back to its default experts implementation
    assert "ratio" in printed and "kneedle" in printed
    assert results["meta"]["mode"] == "smoke"


def test_mfu_smoke(tmp_path, capsys):
    """benchmarks/mfu.py on a tiny OLMoE on CPU (eager only): the job's whole-model FLOPs analytic == measured, no
    peak on a CPU (so no S-MFU / S-MBU), the bare prefill against the measured matmul rate."""
    from benchmarks import mfu

    out = mfu.main(["--tiny", "--modes", "eager", "--decode-tokens", "2", "--reps", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "mfu.json").read_text())["meta"]["model"] == "tiny OLMoE"
    job = out["job_eager"]
    assert job["model_flops_per_token_analytic"] == job["model_flops_per_token_measured"] > 0
    assert out["peaks"] == {"tflops": None, "bandwidth_gbs": None} and "s_mfu_prefill" not in job
    assert out["bare_eager"]["ms"] > 0 and 0 < out["bare_eager"]["fraction_of_measured_matmul"]
    assert "bare prefill" in capsys.readouterr().out


def test_multi_device_smoke_splits_over_cpu_and_disk_and_equals_the_whole_model(tmp_path):
    from benchmarks import multi_device

    out = tmp_path / "multi.json"
    results = multi_device.main(["equal", "--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["equal"]["equal"] is True and results["equal"]["equal"] is True
    offload = results["equal"]["placements"]["offload"]
    assert offload["placement"]["modules_per_place"]["disk"] > 0 and offload["loss_rel_diff"] == 0
