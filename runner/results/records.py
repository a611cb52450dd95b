"""One typed record per results table: `runs` (RunRecord), `layers` (LayerRecord), `experts` (ExpertRecord),
`tasks` (TaskRecord, in analysis_records.py with the routing-analysis tables: coactivation, transitions, placement,
trace).

Each record is the one declaration of its table: the fields are the columns in file order, their annotations the
arrow types and their `col(...)` the meanings (columns.py says how). SCHEMAS, the parquet files and the tables in
docs/results.md are all generated from them. The partition column `model` lives only in the directory names
(`model=<name>`), so it is no field here; readers get it as a last column (full_schema).

A job fills a RunRecord as it goes; a misspelt column is an AttributeError, never a silent new key. The layers and
experts tables are the profiler's frames (MOEProfiler.layers_df / experts_df) plus the run's KeyColumns; their
records describe the stored columns. Adding a column changes what is stored: bump SCHEMA_VERSION.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from handlers.base import DIMENSIONS
from .analysis_records import ANALYSIS_RECORDS, TaskRecord
from .columns import Bool, Double, Int32, Int64, Int64List, String, col, schema_of
from .key_columns import SCHEMA_VERSION, KeyColumns



def new_run_id() -> str:
    """A run's id: unique per attempt, so nothing is ever overwritten."""
    return uuid.uuid4().hex


@dataclasses.dataclass(slots=True)
class RunRecord(KeyColumns):
    """One row of `runs`: one job attempt, whatever its status (ok, failed, skipped, interrupted)."""

    # identity and bookkeeping
    status: String = col("`ok`, `failed`, `skipped` or `interrupted`")
    error: String = col("the one-line error of a failed or interrupted job")
    error_type: String = col("the exception's class name (`LostJob` for a job process that died without a row, "
                             "`KeyboardInterrupt` for Ctrl-C)")
    resumed_from: String = col("for a `skipped` row: the `run_id` whose results it reused")
    sweep_dir: String = col("the sweep directory; null for single runs")
    job_dir: String = col("the job's own directory (Hydra's output dir)")
    overrides: String = col("JSON list of the job's overrides")
    experiment: String = col("the `experiment` option, if any")
    tag: String = col("the `tag` key (`${oc.env:...}` kept as written)")
    # what ran
    hf_id: String = col("`model.hf_id` (hub id or local directory); null for the tiny models")
    model_type: String = col("the transformers `model_type`")
    revision: String = col("`model.revision`")
    topk_requested: Int32 = col("the `topk` key as given; null = the model's own top-k")
    default_topk: Int32 = col("the model's own top-k, as the profiler resolved it")
    selector_params: String = col("JSON of the selector's parameters as applied (`k_max` included)")
    k_max: Int32 = col("the selector's `k_max`; null under `router`")
    target_k: Double = col("`selector.target_k`: the mean k the selector was calibrated to (router: the static k) (v4)")
    calibration_batches: Int32 = col("leading batches held out of the evaluation to calibrate on (v4)")
    calibration_slice: String = col("the blocks calibrated on (`blocks 0-N of <dataset_source> (batches 0-M)`) (v4)")
    calibrated_param: String = col("the selector parameter calibrated (`threshold`, `alpha`, `ratio`, `keep`) (v4)")
    calibrated_value: Double = col("its calibrated value (also in `selector_params`) (v4)")
    calibration_k_mean: Double = col("the mean k it gave on the calibration batches; `k_mean` is the evaluation's (v4)")
    dataset_kind: String = col("`builtin`, `pydoc`, `hf` or `local`")
    dataset_source: String = col("the full source: path, config, split, slice, data files (`json:train[:64] "
                                 "/data/eval.jsonl`)")
    seq_len: Int32 = col("tokens per block")
    batch_size: Int32 = col("blocks per batch")
    max_batches: Int32 = col("the cap on batches; null = the whole slice")
    device: String = col("the device config's name (`cpu`, `cuda`, `auto`)")
    device_name: String = col("the device that ran: the GPU's name, or the CPU with its core count")
    dtype: String = col("the dtype of the loaded weights")
    experts_implementation: String = col("transformers' experts implementation the model ran with (e.g. `grouped_mm`)")
    tokenizer: String = col("the tokenizer used (`none` for `meta` weights)")
    seed: Int64 = col("the `seed` key (seed for random weights)")
    measure_flops: Bool = col("FLOPs counted on every batch (false: on the first batch only)")
    compile: Bool = col("the model ran under torch.compile")
    compile_mode: String = col("the torch.compile mode; null when not compiled")
    decode_tokens: Int32 = col("tokens generated after each batch (0: no decode)")
    dims_override: String = col("JSON of the `dims.override.*` given")
    dims_fallback: String = col("JSON of the `dims.fallback.*` given")
    eval_tasks: String = col("JSON list of the `eval.tasks` asked for with `eval=lm_eval` (v3); null with `eval=none`")
    # data
    documents: Int64 = col("documents read")
    blocks: Int64 = col("blocks of `seq_len` tokens evaluated")
    batches: Int64 = col("batches evaluated")
    tokens: Int64 = col("tokens evaluated (0 for `meta` weights)")
    targets: Int64 = col("next-token targets the loss averages over (`seq_len - 1` per block)")
    # quality
    loss: Double = col("token-level mean NLL over the targets")
    ppl: Double = col("exp(loss)")
    reference: Bool = col("a reference pass with the model's own routing ran (`quality`)")
    ref_loss: Double = col("the reference pass's loss")
    ref_ppl: Double = col("exp(ref_loss)")
    kl: Double = col("mean KL(P_ref ‖ P_job) of the next-token distributions")
    top1_agreement: Double = col("share of targets where the reference and the job predict the same next token")
    ci_units: Int64 = col("documents the 95 % bootstrap intervals below resample (blocks without documents) (v4)")
    loss_ci_low: Double = col("lower end of the 95 % interval of `loss` (v4)")
    loss_ci_high: Double = col("upper end of the 95 % interval of `loss` (v4)")
    ppl_ci_low: Double = col("exp(loss_ci_low) (v4)")
    ppl_ci_high: Double = col("exp(loss_ci_high) (v4)")
    kl_ci_low: Double = col("lower end of the 95 % interval of `kl` (v4)")
    kl_ci_high: Double = col("upper end of the 95 % interval of `kl` (v4)")
    top1_agreement_ci_low: Double = col("lower end of the 95 % interval of `top1_agreement` (v4)")
    top1_agreement_ci_high: Double = col("upper end of the 95 % interval of `top1_agreement` (v4)")
    loss_delta_ci_low: Double = col("lower end of the 95 % interval of loss − ref_loss, paired per document (v4)")
    loss_delta_ci_high: Double = col("upper end of the 95 % interval of loss − ref_loss (v4)")
    # routing and FLOPs (MoE layers only)
    moe_layers: Int32 = col("number of MoE layers")
    k_mean: Double = col("mean over the MoE layers of their prefill `k_mean`")
    flops_per_token_analytic: Double = col("analytic MoE FLOPs per token, summed over the MoE layers, at the job's k "
                                           "(k_max for a selector)")
    flops_per_token_routed: Double = col("MoE FLOPs per token from the recorded assignments (follows the dynamic k), "
                                         "summed over the MoE layers")
    flops_per_token_measured: Double = col("FlopCounterMode MoE FLOPs over the measured tokens, summed over the MoE "
                                           "layers")
    flops_measured_tokens: Int64 = col("tokens the measured count covers")
    flops_exact: Bool = col("every MoE layer's analytic count is exact for this architecture")
    params_total: Int64 = col("all parameters")
    params_active: Double = col("parameters active per token at the job's k, embeddings included")
    params_active_nonembedding: Double = col("`params_active` without the input embedding tables (an LM head tied to "
                                             "them stays counted): the convention of most MoE papers (v3)")
    # the whole model (docs/flops.md#the-whole-forward)
    model_flops_per_token_analytic: Double = col("analytic FLOPs per token of the whole forward at the job's batch and "
                                                 "`seq_len` (MoE layers at their routed count), no causal halving (v3)")
    model_flops_per_token_measured: Double = col("FlopCounterMode FLOPs of the whole forward over the measured tokens "
                                                 "(v3)")
    model_flops_exact: Bool = col("the whole-forward analytic count is exact for this architecture and, where "
                                  "measured, equals the measured count of the same tokens (v3)")
    flops_warning: String = col("why an MoE layer's FLOPs count marked exact is not: the layers whose measured count "
                                "differs from the analytic count of the same tokens, with both numbers (`flops_exact` "
                                "is then false); null when none (v4)")
    model_flops_warning: String = col("the same for the whole forward (`model_flops_exact` is then false); null when "
                                      "none (v4)")
    attention_flops_per_token_causal: Double = col("the attention-score term per token with causal halving (the "
                                                   "documented variant; the analytic total counts the full matrix) (v3)")
    model_flops_per_token_decode: Double = col("with `decode_tokens`: analytic FLOPs per generated token, a decode step "
                                               "through generate's static cache of `seq_len + decode_tokens - 1` "
                                               "slots (MLA: the latent re-expanded at every slot), the MoE layers at "
                                               "their decode routed count (v3)")
    param_bytes_per_token: Double = col("prefill: parameter bytes read per token (dense parameters and each routed "
                                        "expert a token of the batch chose, read once per batch) (v3)")
    kv_cache_bytes_per_token: Double = col("bytes the KV cache holds per token of context (MLA: its latent), in the "
                                           "model's dtype: generate's static cache of `seq_len + decode_tokens - 1` "
                                           "slots (v3)")
    decode_bytes_per_step: Double = col("with `decode_tokens`: bytes read per decode step: parameters (activated "
                                        "experts once per step, expected from the decode loads) and the static KV "
                                        "cache (v3)")
    peak_tflops: Double = col("the device's peak dense TFLOP/s used for S-MFU (`device.peak_tflops` or the table); "
                              "null on CPU (v3)")
    peak_bandwidth_gbs: Double = col("the device's peak memory GB/s used for S-MBU; null on CPU (v3)")
    s_mfu_prefill: Double = col("sparse MFU of the prefill forwards: model_flops_per_token_analytic x tokens_per_s / "
                                "(GPUs the model occupies x peak) (v3)")
    s_mbu_decode: Double = col("sparse MBU of decode: decode_bytes_per_step / tpot / (GPUs x peak bandwidth) (v3)")
    # routing analyses (docs/metrics.md): the prefill phase, averaged over the MoE layers (v3)
    analysis: String = col("the `analysis` preset the job started from (`basic`, `full`, `none`)")
    drop_rate_cf1_25: Double = col("mean over the MoE layers of `layers.drop_rate_cf1_25`; null unless recorded")
    jaccard_mean: Double = col("mean over the pairs of consecutive MoE layers of `layers.jaccard_next`; null unless "
                               "transitions are recorded")
    jaccard_random_mean: Double = col("mean of `layers.jaccard_random` over the same pairs: its random baseline (v4)")
    load_max_mean_p50: Double = col("median over the MoE layers of the prefill `layers.load_max_mean` (v4)")
    load_max_mean_p95: Double = col("its 95th percentile (v4)")
    load_cv_p50: Double = col("median of `layers.load_cv` (v4)")
    load_cv_p95: Double = col("its 95th percentile (v4)")
    load_jain_p05: Double = col("5th percentile of `layers.load_jain` (its bad tail is low) (v4)")
    load_jain_p50: Double = col("median of `layers.load_jain` (v4)")
    load_entropy_p05: Double = col("5th percentile of `layers.load_entropy` (v4)")
    load_entropy_p50: Double = col("median of `layers.load_entropy` (v4)")
    ep_size_max: Int32 = col("the largest EP size simulated (`analysis.placement`)")
    ep_imbalance_balanced: Double = col("mean over the MoE layers of the `balanced` placement's imbalance at "
                                        "`ep_size_max`, fitted on this run's loads")
    trace_rows: Int64 = col("rows written to `table=trace` (trace=true)")
    trace_tokens_skipped: Int64 = col("tokens per MoE layer not traced because of `trace.max_tokens`")
    # time and memory
    model_load_s: Double = col("seconds to load the model (0 when reused)")
    model_reused: Bool = col("the model came from the previous job of the same process")
    data_s: Double = col("seconds to read and tokenize the data")
    forward_s: Double = col("seconds of the profiled forward passes")
    reference_s: Double = col("seconds of the reference passes")
    tokens_per_s: Double = col("tokens per second over the batches without FLOP counting (over all batches when every "
                               "batch counted FLOPs)")
    ttft_ms: Double = col("with `decode_tokens`: time to first token (first token out minus start), mean over batches")
    tpot_ms: Double = col("with `decode_tokens`: mean time of each later decode step, for the whole batch")
    tokens_per_s_paused: Double = col("tokens_per_s with the profiler paused (hooks off): the first three timed batches "
                                      "run again in the same job, interleaved (v4)")
    ttft_paused_ms: Double = col("ttft_ms with the profiler paused: the first three batches generate again (v4)")
    tpot_paused_ms: Double = col("tpot_ms with the profiler paused: the first three batches generate again (v4)")
    decode_steps: Int64 = col("decode steps timed, over all batches")
    wall_s: Double = col("the job's wall time")
    peak_rss_bytes: Int64 = col("the process's peak RSS (it only grows across jobs run in one process)")
    peak_allocated_bytes: Int64 = col("peak CUDA memory allocated (null on CPU)")
    peak_reserved_bytes: Int64 = col("peak CUDA memory reserved (null on CPU)")
    memory_by_device: String = col("JSON, per GPU the model used: {\"cuda:0\": {name, peak_allocated_bytes, "
                                   "peak_reserved_bytes, total_bytes}}; the two columns above are the largest (null on "
                                   "CPU) (v3)")
    # provenance
    runner_version: String = col("this package's version")
    torch_version: String = col("torch's version")
    transformers_version: String = col("transformers' version")
    python_version: String = col("Python's version")
    git_sha: String = col("HEAD of the checkout the runner ran from")
    git_dirty: Bool = col("that checkout had uncommitted changes to tracked files")
    host: String = col("host name")
    pid: Int64 = col("process id")
    lm_eval_version: String = col("lm-evaluation-harness's version, for a job with `eval=lm_eval` (v3)")
    slurm_job_id: String = col("the SLURM job id (`<array>_<task>`) when the job ran under SLURM (added in v2)")
    config_yaml: String = col("the resolved job config (`${oc.env:...}` kept as written outside `out_root` and "
                              "`results_dir`)")

    def update(self, **columns: Any) -> RunRecord:
        """Set columns by name (a dict of results, e.g. provenance()); an unknown name is an AttributeError."""
        for name, value in columns.items():
            if name not in _RUN_COLUMN_SET:
                raise AttributeError(f"runs has no column {name!r} (the columns are the fields of RunRecord, "
                                     "runner/results/records.py)")
            setattr(self, name, value)
        return self

    def keys(self) -> dict[str, Any]:
        """The KeyColumns of this run: what its layers and experts rows carry."""
        return {name: getattr(self, name) for name in KEY_COLUMNS}

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RUN_COLUMNS}

    def stamp_provenance(self) -> RunRecord:
        """Versions, git state, host and pid (runner/results/provenance.py)."""
        from .provenance import provenance

        return self.update(**provenance())

    def ended(self, status: str, wall_s: float | None, error: str | None = None,
              error_type: str | None = None) -> RunRecord:
        """A row that did not finish `ok` (failed, interrupted): its status, error and wall time; the provenance is
        best effort (the row is written anyway)."""
        self.update(status=status, error=error, error_type=error_type, wall_s=wall_s)
        with contextlib.suppress(Exception):  # recording the failure matters more than the versions
            self.stamp_provenance()
        return self

    @classmethod
    def lost(cls, sweep_id: str, sweep_dir: str, job_num: int, overrides: list[str], error: str,
             **keys: Any) -> RunRecord:
        """The `failed` row (error_type LostJob) of a planned job whose process ended without writing one (a crash,
        an OOM kill, a SLURM cancel or limit): `keys` are what is known of it (topk, selector, dataset, ...)."""
        row = cls(run_id=new_run_id(), sweep_id=sweep_id, sweep_dir=sweep_dir, job_num=job_num,
                  job_dir=str(Path(sweep_dir) / str(job_num)), timestamp=dt.datetime.now(dt.timezone.utc),
                  overrides=json.dumps(overrides), **keys)
        return row.ended("failed", None, error=error, error_type="LostJob")

    def skipped(self, prior: Any, wall_s: float) -> RunRecord:
        """A resumed job (resume=true): `prior` is the ok runs row whose results it reuses; the sweep summary and the
        baseline show that run's metrics (summaries.fill_resumed)."""
        self.update(status="skipped", resumed_from=prior["run_id"], wall_s=wall_s, topk=prior["topk"],
                    selector=prior["selector"])
        return self.stamp_provenance()


@dataclasses.dataclass(slots=True)
class _LayerColumns(KeyColumns):
    """The layers columns up to the dimension columns (LayerRecord adds those, one triple per dimension)."""

    phase: String = col("`prefill` (the scoring passes), `decode` (the generated tokens, with `decode_tokens`) or `eval` "
                         "(the tokens lm-eval scored, with `eval=lm_eval`; v3)")
    layer: Int32 = col("the model's own layer index")
    position: Int32 = col("index among the MoE layers")
    module: String = col("the MoE block's module path (`model.layers.3.mlp`)")
    block_class: String = col("the MoE block's class (`OlmoeSparseMoeBlock`)")
    device: String = col("the device the layer ran on (`cuda:1`; an offloaded layer's is the GPU it is brought to) "
                         "(v3)")
    top_k: Int64 = col("the live top-k that ran (k_max under a selector)")
    tokens: Int64 = col("tokens seen by the layer")
    assignments: Int64 = col("Σ_t k_t")
    k_mean: Double = col("mean k_t")
    k_hist: Int64List = col("histogram of k_t over 0..k")
    k_at_1: Double = col("share of tokens with k_t = 1")
    k_at_max: Double = col("share of tokens at the live top-k")
    flops_router: Double = col("router FLOPs over the tokens seen")
    flops_experts: Double = col("routed-expert FLOPs over the tokens seen (real per-token k)")
    flops_shared: Double = col("shared-expert FLOPs over the tokens seen")
    flops: Double = col("flops_router + flops_experts + flops_shared")
    flops_per_token: Double = col("flops / tokens")
    flops_per_token_analytic: Double = col("analytic FLOPs per token at the live top-k")
    flops_measured: Double = col("FlopCounterMode FLOPs of the layer over the measured batches; null when not measured")
    flops_measured_per_token: Double = col("flops_measured / the measured tokens (prefill rows)")
    param_bytes: Double = col("routed-expert parameter bytes read per forward: the distinct experts activated per "
                              "batch (prefill) or, expected, per step (decode) (v3)")
    router_entropy: Double = col("mean H(p)/ln E (1 = uniform router)")
    top1_prob: Double = col("mean p₍₁₎")
    top1_margin: Double = col("mean p₍₁₎ − p₍₂₎")
    selected_mass: Double = col("mean router probability of the experts used")
    load_cv: Double = col("std/mean of the expert loads (population std)")
    load_jain: Double = col("Jain's index (Σc)²/(E·Σc²) of the expert loads (1 = balanced, 1/E = one expert) (v4)")
    load_gini: Double = col("Gini coefficient of the expert loads")
    load_entropy: Double = col("normalised entropy of the expert loads, nats / ln E (1 = perfectly balanced)")
    load_max_mean: Double = col("max/mean of the expert loads")
    load_maxvio: Double = col("MaxVio = max/mean − 1 of the expert loads (v4)")
    dead_experts: Int64 = col("experts that got no token")
    cold_experts: Int64 = col("experts with a share of the assignments below a tenth of the uniform share 1/E, dead "
                              "ones included (v4)")
    distinct_experts_per_call: Double = col("with capacity drops recorded: mean over router calls of the distinct "
                                            "experts the call used (v4)")
    distinct_experts_uniform: Double = col("the same under uniform routing: mean over calls of E(1 − (1 − k/E)^B), B "
                                           "the call's tokens, k its mean k (v4)")
    topk_boundary_margin: Double = col("mean (lowest selected − highest unselected score) / lowest selected score, over "
                                       "tokens with a boundary (v2)")
    drop_rate_cf1_0: Double = col("share of the assignments a capacity factor 1.0 router would drop, per call; null unless capacity drops "
                                  "are recorded (v2)")
    drop_rate_cf1_25: Double = col("the same at capacity factor 1.25 (v2)")
    drop_rate_cf1_5: Double = col("the same at capacity factor 1.5 (v2)")
    drop_rate_cf2_0: Double = col("the same at capacity factor 2.0 (v2)")
    jaccard_next: Double = col("with transitions on: mean per-token Jaccard similarity of the selected sets of this "
                               "layer and the next MoE layer (v2)")
    jaccard_random: Double = col("with transitions on: the `jaccard_next` uniform random routing gives at the two "
                                 "layers' k histograms, computed exactly (v4)")
    vocab_specialization: Double = col("with `analysis.vocab_specialization`: over the token ids seen at least "
                                       "`analysis.min_token_count` times, the mean share of their occurrences routed "
                                       "top-1 to the id's most frequent expert (v3)")
    vocab_ids: Int64 = col("the token ids that qualified for `vocab_specialization` (v3)")
    vocab_tokens: Int64 = col("the tokens paired with their input id for `vocab_specialization` (v3)")
    lookahead_recall: Double = col("with `analysis.lookahead`: mean per-token share of the next MoE layer's selected "
                                   "experts that this layer's router input, sent through the next layer's router, "
                                   "predicted (recall@k of a layer-ahead prefetcher); NaN on the last MoE layer (v4)")
    latency_ms_mean: Double = col("with `latency=true`: mean block time per call in this row's phase")
    latency_ms_p50: Double = col("with `latency=true`: median block time per call in this row's phase")
    latency_calls: Int64 = col("with `latency=true`: calls timed in this row's phase (its first call dropped as warm-up)")
    exact: Bool = col("the analytic count is exact for this architecture")
    note: String = col("why it is not exact, or what the architecture cannot do")
    flops_warning: String = col("the layer is marked exact but its measured FLOPs differ from the analytic count of "
                                "the same tokens, with both numbers (`exact` is then false); null when they agree or "
                                "nothing was measured (v4)")
    dims_warning: String = col("a config or `dims.override` value that contradicts the module's weights, with both "
                               "values; null when none")

# The profiler's resolved dimensions (handlers.base.DIMENSIONS), three columns each: the value, where it came from and
# what it was read from. `top_k` is the live k that ran; the model's own top-k is the column `default_top_k`.
DIMENSION_MEANINGS = {  # dimension -> (meaning of the value, an example of where it is read from)
    "num_experts": ("routed experts", "model.config.num_experts"),
    "top_k": ("the model's own top-k (the live one is `top_k`)", "model.config.num_experts_per_tok"),
    "hidden_dim": ("hidden size H", "model.config.hidden_size"),
    "expert_dim": ("a routed expert's width I", "experts.down_proj.shape[2]"),
    "shared_expert_dim": ("the shared experts' width (0: none)", None),
}


def _dimension_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    out = []
    for dim in DIMENSIONS:
        column = "default_top_k" if dim == "top_k" else dim
        meaning, example = DIMENSION_MEANINGS.get(dim, (dim.replace("_", " "), None))
        out += [(column, Int64, col(meaning)),
                (f"{column}_source", String, col(f"where `{column}` came from: `override`, `config`, `module`, "
                                                  "`fallback` or `default`")),
                (f"{column}_detail", String, col("the field, attribute or shape it was read from"
                                                  + (f" (`{example}`)" if example else "")))]
    return out


LayerRecord = dataclasses.make_dataclass("LayerRecord", _dimension_fields(), bases=(_LayerColumns,), slots=True)
LayerRecord.__module__ = __name__
LayerRecord.__doc__ = ("One row of `layers`: one job x phase x MoE layer (MOEProfiler.layers_df() plus the run's "
                       "KeyColumns and the dimension columns).")


@dataclasses.dataclass(slots=True)
class ExpertRecord(KeyColumns):
    """One row of `experts`: one job x phase x MoE layer x expert, zero-count experts included
    (MOEProfiler.experts_df() plus the run's KeyColumns)."""

    phase: String = col("`prefill`, `decode` or `eval`")
    layer: Int32 = col("the model's own layer index")
    expert: Int32 = col("the expert's index")
    tokens: Int64 = col("(token, slot) assignments to the expert, c_e")
    load_fraction: Double = col("the expert's share of the layer's assignments, f_e")
    gate_mass: Double = col("sum of the combine weights given to the expert")
    mean_prob: Double = col("mean router probability of the expert over the layer's tokens")



RECORDS: dict[str, type] = {"runs": RunRecord, "layers": LayerRecord, "experts": ExpertRecord, **ANALYSIS_RECORDS,
                            "tasks": TaskRecord}
TABLES = tuple(RECORDS)
SCHEMAS: dict[str, pa.Schema] = {table: schema_of(record) for table, record in RECORDS.items()}
KEY_COLUMNS = tuple(f.name for f in dataclasses.fields(KeyColumns))
RUN_COLUMNS = tuple(SCHEMAS["runs"].names)
_RUN_COLUMN_SET = frozenset(RUN_COLUMNS)
PARTITION = pa.schema([("model", pa.string())])


def full_schema(table: str) -> pa.Schema:
    """The file schema plus the `model` partition column (what readers see)."""
    return SCHEMAS[table].append(PARTITION.field("model"))
