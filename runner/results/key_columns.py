"""The columns every results table starts with (KeyColumns: they join a row back to its run) and the schemas'
version. records.py and analysis_records.py both build on them."""
from __future__ import annotations

import dataclasses

from .columns import Int32, String, Timestamp, col

SCHEMA_VERSION = 4


@dataclasses.dataclass(slots=True)
class KeyColumns:
    """The columns every table starts with: they join a layers or experts row back to its run."""

    schema_version: Int32 = col("version of the results schemas (2 adds runs.slurm_job_id and the layers routing diagnostics; 3 the analysis tables, the tasks table, the whole-model cost, layers.device, runs.memory_by_device and their runs columns; 4 the FLOPs guard's warnings, the cache, locality and ablation tables, layers.lookahead_recall, the standard balance family, distinct experts per call, the random-routing baselines, calibration, the confidence intervals and the speed figures with the profiler paused)", default=SCHEMA_VERSION)
    run_id: String = col("id of this job attempt (every attempt has its own, a resumed one too)",
                         joined="the job's `run_id`")
    sweep_id: String = col("a hash of the sweep directory; null for single runs",
                           joined="the job's `sweep_id`; null for single runs")
    job_num: Int32 = col("the job's number in its sweep; null for single runs")
    config_hash: String = col("a hash of the resolved job config minus `hydra` and the output/reporting keys "
                              "(`out_root, results_dir, resume, on_error, progress, debug, tag, report`): equal hash "
                              "means the same measurement (data source and slice, `seq_len`, batch settings, dtype, "
                              "device, seed, ...)", joined="the job's `config_hash`")
    timestamp: Timestamp = col("when the job started")
    topk: Int32 = col("the live top-k that ran; `k_max` under a dynamic selector",
                      joined="the job's live top-k (k_max under a selector)")
    selector: String = col("the selector (`router` = the model's own routing)", joined="the job's selector")
    dataset: String = col("the dataset label: `dataset.name`, else derived from what was loaded "
                          "([runner.md](runner.md#datasets))", joined="the job's dataset label")
    weights: String = col("`pretrained`, `random` or `meta`")
