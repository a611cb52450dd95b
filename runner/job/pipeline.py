"""One job of `python -m runner`: validate the config, load data + model, profile, evaluate, write parquet.

`run(cfg)` is the Hydra task function's body. A known error never escapes as a traceback: a single run exits with one
line on stderr (SystemExit); a multirun (on_error=record) writes a `failed` row and returns, so the sweep goes on.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import cost_columns as costs, data, eval_harness, models
from .. import results
from ..errors import RunnerError, describe, known_errors, one_line
from ..results import RunRecord
from ..results.io import keep_parts, redact_environment
from ..results.gpu_memory import memory_columns
from ..config.identity import config_hash, stored_config
from ..config.schema import RunnerConfig, Weights
from ..profiler.phases import PHASES
from ..profiler.selector_registry import OWN_ROUTING
from ..slurm import job_id as slurm_job_id
from .context import JobContext, environment_values, hydra_context
from .measurement import layer_table, measure, with_analytic_flops
from ..config.checks import check_loaded, validate

log = logging.getLogger("runner")
# what the job prints (its summary, a skip, a one-line error) also goes here: conf/config.yaml sends it to the job's
# runner.log only, so the console shows it once, without a log prefix
printed_copy = logging.getLogger("runner.printed")


def say(text: str) -> None:
    print(text, flush=True)
    with contextlib.suppress(OSError):  # the log copy never fails a job (a stale handler of a removed job dir)
        printed_copy.info("%s", text)


# ---------------------------------------------------------------------------------------------------------------------
def _stored_tag(cfg: DictConfig) -> Any:
    with contextlib.suppress(Exception):
        return stored_config(cfg).get("tag")
    return None


def _on_error(cfg: DictConfig, ctx: JobContext) -> str:
    mode = cfg.get("on_error", "auto") if isinstance(cfg, DictConfig) else "auto"
    if mode not in ("raise", "record"):
        mode = "record" if ctx.multirun else "raise"
    return mode


def _full_errors(cfg: DictConfig) -> bool:
    debug = False
    with contextlib.suppress(Exception):
        debug = bool(cfg.get("debug", False))
    return debug or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _raw(cfg: DictConfig, key: str, default: Any = None) -> Any:
    with contextlib.suppress(Exception):
        value = OmegaConf.select(cfg, key, default=default)
        return value.value if hasattr(value, "value") and not isinstance(value, (str, int)) else value
    return default


def settings(conf: RunnerConfig) -> dict[str, Any]:
    """The runs columns that say what a job measures: data, block length, batching, device, seed, dims, selector."""
    m, d = conf.model, conf.dataset
    return dict(revision=m.revision, dataset=data.label(d), dataset_kind=d.kind.value, dataset_source=data.describe(d),
                seq_len=conf.seq_len, batch_size=conf.batch_size, max_batches=conf.max_batches, device=conf.device.name,
                seed=conf.seed, measure_flops=conf.measure_flops, compile=conf.compile,
                compile_mode=conf.compile_mode if conf.compile else None, decode_tokens=conf.decode_tokens,
                selector_params=json.dumps(conf.selector.params, sort_keys=True),
                dims_override=json.dumps(conf.dims.override.given(), sort_keys=True),
                dims_fallback=json.dumps(conf.dims.fallback.given(), sort_keys=True))


# ---------------------------------------------------------------------------------------------------------------------
def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job; returns a small dict (status, run_id, ...) that Hydra keeps as the job's return value.

    The failure policy, in one place, around the steps: Ctrl-C records the job as `interrupted` and stops; any other
    failure becomes a `failed` row (a sweep goes on) or one line on stderr (a single run), never a lost result."""
    ctx = hydra_context()
    attempt = Attempt(row=first_row(cfg, ctx), model_slug=str(_raw(cfg, "model.name") or "unknown"))
    secrets: dict[str, str] = {}
    with contextlib.suppress(Exception):  # a config that does not even convert fails below, with its own line
        secrets = environment_values(cfg, ctx)
    redact_environment(secrets)
    try:
        return _steps(cfg, ctx, attempt)
    except KeyboardInterrupt:  # Ctrl-C: record this job as interrupted (not as a crash), then stop
        _interrupted(cfg, ctx, attempt.row, attempt.model_slug, attempt.results_dir, attempt.start)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row or one line
        return _failed(exc, cfg, ctx, attempt.row, attempt.model_slug, attempt.results_dir, attempt.start)


@dataclass
class Attempt:
    """One attempt at a job: its runs row and where it writes, filled in as the steps learn them."""

    row: RunRecord
    model_slug: str
    start: float = field(default_factory=time.perf_counter)
    results_dir: str | None = None


def first_row(cfg: DictConfig, ctx: JobContext) -> RunRecord:
    """The runs row as far as the raw config and Hydra tell, before anything is checked: a job that fails at once
    still records what was asked for."""
    return RunRecord(
        run_id=results.new_run_id(), sweep_id=ctx.sweep_id, sweep_dir=ctx.sweep_dir, job_num=ctx.job_num,
        job_dir=ctx.job_dir, timestamp=dt.datetime.now(dt.timezone.utc), overrides=json.dumps(ctx.overrides),
        experiment=ctx.choices.get("experiment"), tag=_stored_tag(cfg), topk_requested=_raw(cfg, "topk"),
        topk=_raw(cfg, "topk"), selector=_raw(cfg, "selector.name"), dataset=_raw(cfg, "dataset.name"),
        weights=_raw(cfg, "model.weights"), hf_id=_raw(cfg, "model.hf_id"), model_type=_raw(cfg, "model.model_type"),
        slurm_job_id=slurm_job_id(),
    )


def _steps(cfg: DictConfig, ctx: JobContext, attempt: Attempt) -> dict[str, Any]:
    """Check the config, name it, skip it when resuming finds it done, run it, write its tables, print its summary."""
    row = attempt.row
    conf = validate(cfg)  # ConfigError naming the key; nothing loaded yet
    identify(cfg, conf, row)
    attempt.results_dir = results_dir = ctx.absolute(conf.results_dir)
    results.check_writable(results_dir)
    prior = results.find_ok(results_dir, row.config_hash) if conf.resume else None
    if prior is not None:
        return _skip(conf, ctx, row, prior, results_dir, attempt.start)
    frames = execute(conf, ctx, row, results_dir)
    row.update(status="ok", wall_s=time.perf_counter() - attempt.start)
    write_tables(conf, row, frames, results_dir)
    say(results.job_summary(row, conf.model.name, results_dir, None if ctx.multirun else ctx.job_dir, frames[2]))
    return dict(status="ok", run_id=row.run_id, config_hash=row.config_hash, loss=row.loss,
                flops_per_token=row.flops_per_token_analytic)


def identify(cfg: DictConfig, conf: RunnerConfig, row: RunRecord) -> None:
    """The config's identity and settings on the row (also on a row that fails later: what was asked for)."""
    row.config_hash = config_hash(cfg)
    row.config_yaml = OmegaConf.to_yaml(stored_config(cfg), resolve=True)
    row.update(**settings(conf))


def write_tables(conf: RunnerConfig, row: RunRecord, frames, results_dir: str) -> None:
    """The layers, experts and tasks rows (those with rows), then the runs row: a runs row means the rest is there."""
    for table, frame in zip(("layers", "experts", "tasks"), frames):
        if frame is not None:
            results.write_part(results_dir, table, conf.model.name,
                               list(results.rows_from_frame(frame, row.keys())), row.config_hash, row.run_id)
    results.write_part(results_dir, "runs", conf.model.name, [row], row.config_hash, row.run_id)
    keep_parts(row.run_id)


def _interrupted(cfg: DictConfig, ctx: JobContext, row: RunRecord, model_slug: str, results_dir: str | None,
                 start: float) -> None:
    from ..errors import INTERRUPT

    with contextlib.suppress(BaseException):  # a second Ctrl-C while recording gives up on the row
        results_dir = results_dir or str(results.check_writable(ctx.absolute(str(_raw(cfg, "results_dir")))))
        row.ended("interrupted", time.perf_counter() - start, error_type="KeyboardInterrupt",
                  error="interrupted (Ctrl-C / SIGINT) before the job finished")
        results.write_part(results_dir, "runs", model_slug, [row], row.config_hash, row.run_id)
        INTERRUPT["job"] = f"job {ctx.job_num}" if ctx.job_num is not None else "the job"


def _skip(conf: RunnerConfig, ctx: JobContext, row: RunRecord, prior, results_dir: str,
          start: float) -> dict[str, Any]:
    row.skipped(prior, wall_s=time.perf_counter() - start)
    results.write_part(results_dir, "runs", conf.model.name, [row], row.config_hash, row.run_id)
    say(results.skip_summary(row, conf.model.name, prior))
    return dict(status="skipped", run_id=row.run_id, resumed_from=prior["run_id"], config_hash=row.config_hash)


def _failed(exc: Exception, cfg: DictConfig, ctx: JobContext, row: RunRecord, model_slug: str,
            results_dir: str | None, start: float) -> dict[str, Any]:
    mode = _on_error(cfg, ctx)
    results.remove_parts(row.run_id)  # a failed job keeps no partial tables (a trace, analysis rows): its row says why
    known = isinstance(exc, known_errors())
    message = describe(exc) if known else f"{type(exc).__name__}: {one_line(exc, 500)}"
    if mode == "record" or not known or _full_errors(cfg):  # a single run's known error is the stderr line alone
        log.error("job failed: %s", message, exc_info=not known or _full_errors(cfg))
    if mode == "record" and results_dir is None:  # failed before validation finished: best effort from the raw config
        raw_dir = _raw(cfg, "results_dir")
        if isinstance(raw_dir, str):
            with contextlib.suppress(RunnerError):
                results_dir = str(results.check_writable(ctx.absolute(raw_dir)))
    if mode == "record" and results_dir is not None:
        row.ended("failed", time.perf_counter() - start, error=message, error_type=type(exc).__name__)
        try:
            results.write_part(results_dir, "runs", model_slug, [row], row.config_hash, row.run_id)
        except RunnerError as write_error:
            log.error("could not record the failure: %s", write_error)
    if mode == "record" and ctx.multirun:
        return dict(status="failed", run_id=row.run_id, error=message)
    if not known or _full_errors(cfg):  # a bug, not a user error (or debug=true): keep the traceback
        raise exc
    with contextlib.suppress(OSError):
        printed_copy.error("runner: error: %s", message)  # stderr gets it from SystemExit
    raise SystemExit(f"runner: error: {message}")


# ---------------------------------------------------------------------------------------------------------------------
def execute(conf: RunnerConfig, ctx: JobContext, row: RunRecord, results_dir: str):
    """The job's work, step by step; fills `row`, writes the analysis tables; returns the layers, experts and tasks
    frames (None: no rows). Everything that can fail on the user's input fails before the model loads."""
    from . import analysis_tables as analysis  # these import torch: not before a job runs (`--help` stays fast)
    from ..profiler.evaluate import without_prompt_pass

    row.stamp_provenance()
    placement_source = check_before_loading(conf, results_dir)
    documents, data_s = read_documents(conf)
    loaded = load_model(conf, row)
    profiler = attach_profiler(conf, loaded)
    try:
        check_attached(conf, ctx, loaded, profiler)
        routing_changed = set_routing(conf, profiler, row)
        analytic = count_flops(profiler, row)
        if conf.model.weights is Weights.meta:  # analytic numbers only: no data, no forward pass
            row.update(data_s=data_s, tokens=0, peak_rss_bytes=_peak_rss())
            return (*costs.add(conf, row, profiler, with_analytic_flops(profiler.layers_df(), analytic), None, loaded),
                    None)
        blocks = tokenize(conf, documents, loaded, row, data_s)
        measured_tokens, tasks = measure(conf, loaded, profiler, blocks, routing_changed, row, results_dir)
        layers = layer_table(profiler, analytic, measured_tokens, row)
        row.update(**memory_columns(profiler.memory_df()), peak_rss_bytes=_peak_rss())
        analysis.write_tables(conf, profiler, layers, row, results_dir, placement_source)
        frames = (*costs.add(conf, row, profiler, layers, without_prompt_pass(profiler.experts_df()), loaded), tasks)
        if conf.analysis.ablation:  # last: its passes change the routing the frames above describe
            analysis.write_ablation(conf, loaded.model, profiler, blocks.ids, row, results_dir)
        return frames
    finally:
        profiler.detach()  # the cached model goes back pristine for the next job


def check_before_loading(conf: RunnerConfig, results_dir: str):
    """The device exists; eval=lm_eval's tasks and datasets are there; analysis.placement_from names something usable
    (before a trace is written): one line each, before anything heavy. Returns the placement source (or None)."""
    from . import analysis_tables as analysis

    models.resolve_device(conf.device, conf.model.weights)
    eval_harness.prepare(conf.eval)
    return analysis.placement_source(conf.analysis.placement_from, conf.model.name, results_dir) \
        if conf.analysis.placement else None


def read_documents(conf: RunnerConfig):
    """The dataset's documents (DataError before the model loads; none for meta weights) and the seconds it took."""
    t = time.perf_counter()
    documents = data.load_documents(conf.dataset) if conf.model.weights is not Weights.meta else None
    return documents, time.perf_counter() - t


def load_model(conf: RunnerConfig, row: RunRecord):
    loaded = models.load(conf.model, conf.device, conf.seed)
    row.update(model_load_s=loaded.load_s, model_reused=loaded.reused, device_name=loaded.device_name,
               dtype=loaded.dtype, tokenizer=loaded.tokenizer_name, experts_implementation=loaded.experts_implementation)
    return loaded


def attach_profiler(conf: RunnerConfig, loaded):
    from . import analysis_tables as analysis
    from ..profiler import MOEProfiler

    with warnings.catch_warnings():  # the scan's per-layer dimension warnings: one line each from check_loaded
        warnings.filterwarnings("ignore", message=r"layer \d+: ")
        return MOEProfiler(loaded.model, overrides=conf.dims.override.given() or None,
                           fallbacks=conf.dims.fallback.given() or None, latency=conf.latency,
                           phases=(*PHASES, *eval_harness.phases(conf.eval)),
                           analyses=analysis.analyses_of(conf.analysis), verbose=False)


def check_attached(conf: RunnerConfig, ctx: JobContext, loaded, profiler) -> None:
    """The scan report in the job dir; what only the loaded model can tell (its top-k, positions, dimensions)."""
    _write_scan_report(ctx, profiler)
    check_loaded(conf, loaded.model, profiler)


def set_routing(conf: RunnerConfig, profiler, row: RunRecord) -> bool:
    """The live top-k or the selector; returns whether the routing differs from the model's own."""
    default_k = profiler.top_k or profiler.layers[0].dims["top_k"].value
    k = conf.topk if conf.topk is not None else default_k
    if conf.selector.name == OWN_ROUTING and conf.selector.target_k is not None:
        k = int(conf.selector.target_k)  # the compute-matched static top-k
    if conf.selector.name == OWN_ROUTING:
        if k != default_k:
            profiler.set_top_k(k)
    else:
        params = conf.selector.params
        params.setdefault("k_max", k)
        profiler.set_selector(conf.selector.name, **params)
    live_k = profiler.top_k or k
    row.update(topk=live_k, default_topk=default_k, k_max=live_k if conf.selector.name != "topk" else None,
               moe_layers=len(profiler.layers))
    if conf.selector.name != OWN_ROUTING:
        row.selector_params = json.dumps(profiler.selector_params, sort_keys=True, default=str)
    return conf.selector.name != OWN_ROUTING or live_k != default_k


def count_flops(profiler, row: RunRecord):
    """The analytic FLOPs per layer and the parameter counts on the row; returns the per-layer FLOPs."""
    analytic = profiler.flops_per_token()
    params = profiler.param_counts()
    row.update(flops_per_token_analytic=float(analytic["flops"].sum()), flops_exact=bool(analytic["exact"].all()),
               params_total=int(params["params_total"]), params_active=float(params["params_active"]))
    return analytic


def tokenize(conf: RunnerConfig, documents, loaded, row: RunRecord, data_s: float):
    """The documents as blocks of seq_len tokens, only as many as the batches need."""
    t = time.perf_counter()
    needed = conf.seq_len * conf.batch_size * (conf.max_batches + conf.selector.held_out_batches) \
        if conf.max_batches is not None else None
    blocks = data.tokenize(documents, loaded.tokenizer, conf.seq_len, data.describe(conf.dataset), max_tokens=needed)
    row.data_s = data_s + time.perf_counter() - t
    return blocks


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _write_scan_report(ctx: JobContext, profiler) -> None:
    if ctx.job_dir:
        with contextlib.suppress(OSError):
            Path(ctx.job_dir).mkdir(parents=True, exist_ok=True)
            (Path(ctx.job_dir) / "scan.txt").write_text(profiler.scan_report() + "\n")
    log.info("%s", profiler.scan_report().splitlines()[0])
