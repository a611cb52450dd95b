"""The job's whole-model cost columns (runner/profiler/cost_run.py computes them): what the job pipeline hands over, and the
device's peaks (the config's, else the table of known GPUs; none on CPU), one per GPU the model occupies."""
from __future__ import annotations

from typing import Any

from ..results import RunRecord
from ..results.summaries import forward_batch
from ..config.schema import RunnerConfig


def add(conf: RunnerConfig, row: RunRecord, profiler, layers, experts, loaded) -> tuple[Any, Any]:
    """Fill `row`'s cost columns; returns (layers with their `param_bytes`, experts) for the job to write."""
    from ..profiler.frames import cuda_devices
    from ..profiler.cost_hardware import peak_for
    from ..profiler.cost_run import cost_columns

    tflops, bandwidth = peak_for(row.device_name, conf.device.peak_tflops, conf.device.peak_bandwidth_gbs,
                                 cuda=loaded.device.type == "cuda")
    columns, layers = cost_columns(
        profiler, layers, experts, batch=forward_batch(conf.batch_size, row.blocks), seq_len=conf.seq_len,
        decode_tokens=conf.decode_tokens or 0, measured_tokens=row.flops_measured_tokens or 0,
        tokens_per_s=row.tokens_per_s, tpot_ms=row.tpot_ms, peak_tflops=tflops, peak_bandwidth_gbs=bandwidth,
        gpus=max(len(cuda_devices(loaded.model)), 1))  # device=auto over several GPUs: all of them, as MoE-CAP
    row.update(**columns)
    return layers, experts
