"""device=auto jobs (accelerate's device map) on a CPU-only machine: the model split between the CPU and disk offload,
for random and pretrained weights, records what the unsplit device=cpu job records; the per-GPU memory summary lines."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from helpers.jobs import compose_job, run_job, table
from runner.job import device_map as dispatch
from runner.errors import DeviceError
from runner.results import RunRecord
from runner.results.gpu_memory import near_full
from runner.results.summaries import job_summary, render

pytest.importorskip("accelerate")

SMALL = ("model=olmoe_tiny", "max_batches=2", "seq_len=64", "topk=1")
# olmoe_tiny is ~630 kB in float32: 400 kB of CPU keeps the embeddings and the first layer, the rest goes to disk
OFFLOAD = ("device=auto", "device.max_memory={cpu: 400KB}")
SAME = ["loss", "ref_loss", "kl", "top1_agreement", "tokens", "flops_per_token_analytic", "flops_per_token_measured",
        "params_total", "dtype"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-map")
    for overrides in ((), OFFLOAD + (f"device.offload_folder={out / 'offload'}",)):
        assert run_job(out, *SMALL, *overrides)["status"] == "ok"
    runs = table(out, "runs").sort_values("timestamp").set_index("device")
    layers = table(out, "layers").merge(runs.reset_index()[["run_id", "device"]].rename(
        columns={"device": "device_config"}), on="run_id")
    return out, runs, layers


def test_random_weights_split_over_cpu_and_disk_equal_the_cpu_job(jobs):
    out, runs, layers = jobs
    assert runs.loc["auto", SAME].tolist() == runs.loc["cpu", SAME].tolist()
    assert runs.loc["auto", "kl"] > 0 and runs.loc["auto", "tokens"] == 1024  # k=1 vs the own k=2: a real KL
    assert runs.loc["auto", "device_name"] == "cpu + disk offload"
    assert runs["memory_by_device"].isna().all()  # no GPU
    by_job = {name: group.sort_values("layer")[["layer", "tokens", "flops", "flops_measured", "device"]]
              .reset_index(drop=True) for name, group in layers.groupby("device_config")}
    assert by_job["auto"].equals(by_job["cpu"]) and list(by_job["auto"]["device"]) == ["cpu", "cpu"]
    folders = list((out / "offload").iterdir())  # the model's own folder (removed at exit): never another's weights
    assert len(folders) == 1 and folders[0].name.startswith("offload-") and (folders[0] / "index.json").is_file()


def test_pretrained_weights_take_the_device_map(tmp_path, jobs):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from runner.job.tokenizer import byte_tokenizer

    directory = tmp_path / "tiny"
    torch.manual_seed(0)
    spec = compose_job(tmp_path, "model=olmoe_tiny").model
    AutoModelForCausalLM.from_config(AutoConfig.for_model("olmoe", **spec.config)).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    out = run_job(tmp_path, *SMALL, *OFFLOAD, f"device.offload_folder={tmp_path / 'offload'}",
                  "model.weights=pretrained", f"model.hf_id={directory}", "model.tokenizer=null")
    assert out["status"] == "ok"
    row = table(tmp_path, "runs").iloc[-1]
    assert row["device_name"] == "cpu + disk offload"
    assert row["flops_per_token_measured"] == jobs[1].loc["cpu", "flops_per_token_measured"]


def test_a_gpu_near_full_is_flagged_in_the_job_summary():
    gib = 2**30
    memory = {"cuda:0": dict(name="H200", peak_allocated_bytes=60 * gib, peak_reserved_bytes=70 * gib,
                             total_bytes=140 * gib),
              "cuda:1": dict(name="H200", peak_allocated_bytes=130 * gib, peak_reserved_bytes=134 * gib,
                             total_bytes=140 * gib)}
    assert near_full(json.dumps(memory)) == ["cuda:1 at 96% (134.0 of 140.0 GiB reserved)"]
    run = RunRecord(memory_by_device=json.dumps(memory), topk=2, moe_layers=2)
    text = job_summary(run, "mixtral", "results")
    assert "peak GPU memory (reserved): cuda:0 75.16GB of 150.32GB, cuda:1 143.88GB of 150.32GB" in text
    assert "WARNING: GPU memory near full (>95%): cuda:1 at 96% (134.0 of 140.0 GiB reserved)" in text
    rows = [RunRecord(job_num=n, status="ok", memory_by_device=json.dumps(m)).as_row() for n, m in
            enumerate([{"cuda:0": memory["cuda:0"]}, memory])]
    summary = pd.DataFrame(rows).assign(model="mixtral")
    sweep = render(summary, dict(planned=None, sweep_id="s1", results_dir="results"), "summary.parquet")
    assert sweep.splitlines()[-2] == "GPU MEMORY NEAR FULL (>95%): job 1: cuda:1 at 96% (134.0 of 140.0 GiB reserved)"


def test_without_accelerate_device_map_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # what an environment without it imports
    with pytest.raises(DeviceError, match=r"^device.device_map needs accelerate, which is not installed: "
                                          r"pip install accelerate"):
        dispatch.require_accelerate()


def test_config_hash_takes_max_memory_keyed_by_gpu_index_and_cpu(tmp_path):
    """`device.max_memory={0: 8GiB, cpu: 100GiB}` (the documented form) mixes int and str keys, which json cannot sort:
    the hash (and the model cache key) take their keys as strings (it failed on an H100 before)."""
    from runner.config.identity import config_hash
    from runner.job import models
    from runner.config.checks import validate

    cfg = compose_job(tmp_path, "device=auto", "device.max_memory={0: 8GiB, cpu: 100GiB}")
    other = compose_job(tmp_path, "device=auto", "device.max_memory={0: 9GiB, cpu: 100GiB}")
    assert len(config_hash(cfg)) == 16 and config_hash(cfg) != config_hash(other)
    conf = validate(cfg)
    assert models.cache_key(conf.model, conf.device, conf.seed) != models.cache_key(conf.model, validate(other).device,
                                                                                   conf.seed)
