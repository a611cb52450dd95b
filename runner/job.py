"""One job of `python -m runner`: validate the config, load data + model, profile, evaluate, write parquet.

`run(cfg)` is the Hydra task function's body. A known error never escapes as a traceback: a single run exits with one
line on stderr (SystemExit); a multirun (on_error=record) writes a `failed` row and returns, so the sweep goes on.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from . import costs, data, eval_harness, results
from .errors import RunnerError, describe, known_errors, one_line
from .results import RunRecord, sweep_id_for
from .results.io import keep_parts, redact_environment
from .schema import NON_RESULT_KEYS, OWN_ROUTING, RunnerConfig, Weights, canonical_json
from .slurm import job_id as slurm_job_id
from .threads import cpu_threads, intra_op_threads
from .validation import check_finite, check_loaded, validate

log = logging.getLogger("runner")
# what the job prints (its summary, a skip, a one-line error) also goes here: conf/config.yaml sends it to the job's
# runner.log only, so the console shows it once, without a log prefix
printed_copy = logging.getLogger("runner.printed")


def say(text: str) -> None:
    print(text, flush=True)
    with contextlib.suppress(OSError):  # the log copy never fails a job (a stale handler of a removed job dir)
        printed_copy.info("%s", text)


# ---------------------------------------------------------------------------------------------------------------------
# Where the job runs (Hydra context)
@dataclass
class JobContext:
    multirun: bool = False
    sweep_id: str | None = None
    sweep_dir: str | None = None
    job_num: int | None = None
    job_dir: str | None = None
    overrides: list[str] = field(default_factory=list)
    sweep_params: dict[str, Any] = field(default_factory=dict)  # hydra.sweeper.params as written (unresolved)
    choices: dict[str, Any] = field(default_factory=dict)
    cwd: str = field(default_factory=os.getcwd)

    def absolute(self, path: str) -> str:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else Path(self.cwd) / p)


def hydra_context() -> JobContext:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return JobContext()
    hc = HydraConfig.get()
    cwd = OmegaConf.select(hc, "runtime.cwd") or os.getcwd()
    job_num = OmegaConf.select(hc, "job.num")
    multirun = hc.mode == RunMode.MULTIRUN or job_num is not None
    def unresolved(key: str) -> Any:  # an override 'tag=${oc.env:S}' is a string to store, not to resolve
        node = OmegaConf.select(hc, key, default=None, throw_on_resolution_failure=False)
        return OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else None

    ctx = JobContext(multirun=multirun, job_num=job_num if multirun else None, cwd=cwd,
                     overrides=[str(o) for o in unresolved("overrides.task") or []],
                     sweep_params=unresolved("sweeper.params") or {},
                     choices={k: v for k, v in (OmegaConf.to_container(hc.runtime.choices) or {}).items()
                              if not k.startswith("hydra/") and k != "runner_schema"})
    ctx.job_dir = OmegaConf.select(hc, "runtime.output_dir")
    if multirun:
        ctx.sweep_dir = ctx.absolute(hc.sweep.dir)
        ctx.sweep_id = sweep_id_for(ctx.sweep_dir)
    return ctx


# ---------------------------------------------------------------------------------------------------------------------
def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved job config minus hydra and output/reporting keys: equal hash <=> same measurement."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in ("hydra", *NON_RESULT_KEYS):
        data.pop(key, None)
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


# keys whose environment interpolations are resolved in stored configs: where results go (${oc.env:RUNNER_OUT,outputs})
PATH_KEYS = ("out_root", "results_dir")
_KEEP_ENV = "runner_keep_env"


def stored_config(cfg: DictConfig) -> DictConfig:
    """`cfg` as stored in the results (config_yaml, tag): every `${oc.env:...}` outside PATH_KEYS stays as written
    when the rest is resolved, so a shared config cannot copy the environment (tokens, home paths) into results."""
    if not OmegaConf.has_resolver(_KEEP_ENV):
        OmegaConf.register_new_resolver(_KEEP_ENV, lambda *args: "${oc.env:" + ",".join(map(str, args)) + "}")

    def keep(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: keep(v) for k, v in node.items()}
        if isinstance(node, list):
            return [keep(v) for v in node]
        return node.replace("${oc.env:", "${" + _KEEP_ENV + ":") if isinstance(node, str) else node

    data = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    return OmegaConf.create({k: v if k in PATH_KEYS else keep(v) for k, v in data.items()})


_ENV_REFERENCE = re.compile(r"\$\{oc\.env:([^,}\s]+)")


def environment_values(cfg: DictConfig, ctx: JobContext) -> dict[str, str]:
    """{value: "${oc.env:NAME}"} for each environment variable the job's config reads outside PATH_KEYS: its keys,
    its command line and the sweep's hydra.sweeper.params (which Hydra resolves into the job's overrides). The
    results store the reference wherever the value would appear (results.io.redact)."""
    def strings(node: Any):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    data = OmegaConf.to_container(cfg, resolve=False)
    paths = [data.pop(key, None) for key in PATH_KEYS]
    path_names = {name for text in strings(paths) for name in _ENV_REFERENCE.findall(text)}
    names = {name for text in strings([data, ctx.overrides, ctx.sweep_params]) for name in _ENV_REFERENCE.findall(text)}
    values = {os.environ.get(name): "${oc.env:" + name + "}" for name in sorted(names - path_names)}
    return {value: ref for value, ref in values.items() if value}


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
    """Run one job; returns a small dict (status, run_id, ...) that Hydra keeps as the job's return value."""
    ctx = hydra_context()
    start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    run_id = results.new_run_id()
    row = RunRecord(
        run_id=run_id, sweep_id=ctx.sweep_id, sweep_dir=ctx.sweep_dir, job_num=ctx.job_num, job_dir=ctx.job_dir,
        timestamp=started, overrides=json.dumps(ctx.overrides), experiment=ctx.choices.get("experiment"),
        tag=_stored_tag(cfg), topk_requested=_raw(cfg, "topk"), topk=_raw(cfg, "topk"),
        selector=_raw(cfg, "selector.name"), dataset=_raw(cfg, "dataset.name"), weights=_raw(cfg, "model.weights"),
        hf_id=_raw(cfg, "model.hf_id"), model_type=_raw(cfg, "model.model_type"), slurm_job_id=slurm_job_id(),
    )
    model_slug = str(_raw(cfg, "model.name") or "unknown")
    results_dir: str | None = None
    secrets: dict[str, str] = {}
    with contextlib.suppress(Exception):  # a config that does not even convert fails below, with its own line
        secrets = environment_values(cfg, ctx)
    redact_environment(secrets)
    try:
        conf = validate(cfg)  # ConfigError naming the key; nothing loaded yet
        row.config_hash = config_hash(cfg)
        row.config_yaml = OmegaConf.to_yaml(stored_config(cfg), resolve=True)
        row.update(**settings(conf))  # also on a row that fails later: what was asked for
        results_dir = ctx.absolute(conf.results_dir)
        results.check_writable(results_dir)
        if conf.resume:
            prior = results.find_ok(results_dir, row.config_hash)
            if prior is not None:
                return _skip(conf, ctx, row, prior, results_dir, start)
        frames = execute(conf, ctx, row, results_dir)
        row.update(status="ok", wall_s=time.perf_counter() - start)
        for table, frame in zip(("layers", "experts", "tasks"), frames):
            if frame is not None:
                results.write_part(results_dir, table, conf.model.name,
                                   list(results.rows_from_frame(frame, row.keys())), row.config_hash, run_id)
        results.write_part(results_dir, "runs", conf.model.name, [row], row.config_hash, run_id)
        keep_parts(run_id)
        say(results.job_summary(row, conf.model.name, results_dir, None if ctx.multirun else ctx.job_dir, frames[2]))
        return dict(status="ok", run_id=run_id, config_hash=row.config_hash, loss=row.loss,
                    flops_per_token=row.flops_per_token_analytic)
    except KeyboardInterrupt:  # Ctrl-C: record this job as interrupted (not as a crash), then stop
        _interrupted(cfg, ctx, row, model_slug, results_dir, start)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row or one line
        return _failed(exc, cfg, ctx, row, model_slug, results_dir, start)


def _interrupted(cfg: DictConfig, ctx: JobContext, row: RunRecord, model_slug: str, results_dir: str | None,
                 start: float) -> None:
    from .errors import INTERRUPT

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
    """Load, profile and evaluate; fills `row`, writes the analysis tables; returns the layers, experts and tasks
    frames (None: no rows)."""
    from . import analysis, dispatch, models
    from .profiler import MOEProfiler
    from .profiler.evaluate import PHASES, PREFILL, without_prompt_pass

    m, d = conf.model, conf.dataset
    row.stamp_provenance()
    models.resolve_device(conf.device, m.weights)  # DeviceError before anything heavy
    eval_harness.prepare(conf.eval)  # eval=lm_eval: an unknown task or a missing dataset is one line, before the model
    # analysis.placement_from naming nothing usable: one line before the model loads (and before a trace is written)
    placement_source = analysis.placement_source(conf.analysis.placement_from, m.name, results_dir) \
        if conf.analysis.placement else None

    documents = None
    t = time.perf_counter()
    if m.weights is not Weights.meta:
        documents = data.load_documents(d)  # DataError before the model loads
    data_s = time.perf_counter() - t

    loaded = models.load(m, conf.device, conf.seed)
    row.update(model_load_s=loaded.load_s, model_reused=loaded.reused, device_name=loaded.device_name,
               dtype=loaded.dtype, tokenizer=loaded.tokenizer_name, experts_implementation=loaded.experts_implementation)
    with warnings.catch_warnings():  # the scan's per-layer dimension warnings: one line each from _check_loaded
        warnings.filterwarnings("ignore", message=r"layer \d+: ")
        profiler = MOEProfiler(loaded.model, overrides=conf.dims.override.given() or None,
                               fallbacks=conf.dims.fallback.given() or None, latency=conf.latency,
                               phases=(*PHASES, *eval_harness.phases(conf.eval)),
                               analyses=analysis.analyses_of(conf.analysis), verbose=False)
    try:
        _write_scan_report(ctx, profiler)
        check_loaded(conf, loaded.model, profiler)
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
        routing_changed = conf.selector.name != OWN_ROUTING or live_k != default_k
        row.update(topk=live_k, default_topk=default_k, k_max=live_k if conf.selector.name != "topk" else None,
                   moe_layers=len(profiler.layers))
        if conf.selector.name != OWN_ROUTING:
            row.selector_params = json.dumps(profiler.selector_params, sort_keys=True, default=str)

        analytic = profiler.flops_per_token()
        params = profiler.param_counts()
        row.update(flops_per_token_analytic=float(analytic["flops"].sum()), flops_exact=bool(analytic["exact"].all()),
                   params_total=int(params["params_total"]), params_active=float(params["params_active"]))
        if m.weights is Weights.meta:
            layers = profiler.layers_df()
            layers = layers.merge(analytic[["layer", "flops"]].rename(columns={"flops": "flops_per_token_analytic"}),
                                  on="layer", how="left")
            row.update(data_s=data_s, tokens=0, peak_rss_bytes=_peak_rss())
            return (*costs.add(conf, row, profiler, layers, None, loaded), None)

        t = time.perf_counter()
        needed = conf.seq_len * conf.batch_size * (conf.max_batches + conf.selector.held_out_batches) \
            if conf.max_batches is not None else None
        blocks = data.tokenize(documents, loaded.tokenizer, conf.seq_len, data.describe(d), max_tokens=needed)
        row.data_s = data_s + time.perf_counter() - t
        need_reference = conf.quality == "always" or (conf.quality == "auto" and routing_changed)
        tracer = analysis.TraceWriter(conf, profiler, blocks, row, results_dir) if conf.trace.enabled else None
        try:
            with intra_op_threads(cpu_threads(conf.device, loaded.device, row.params_total)):
                measured_tokens = _evaluate(conf, loaded, profiler, blocks, need_reference, row, tracer)
                if tracer is not None:
                    tracer.close()  # the trace covers the evaluated batches, not the eval tasks
                    tracer = None
                tasks = eval_harness.run(conf, loaded, profiler, row)  # eval=lm_eval: phase=eval, the tasks table
        except BaseException:
            if tracer is not None:
                tracer.abort()
            raise
        with warnings.catch_warnings():  # the library's warning of non-finite routers: the one line is check_finite's
            warnings.filterwarnings("ignore", message=r"MoE layer\(s\) .*: non-finite router scores")
            profiler_layers = without_prompt_pass(profiler.layers_df())
        check_finite(row.loss, profiler_layers)  # NaN routers: a failed job, never imbalance stored as real
        layers = profiler_layers.merge(
            analytic[["layer", "flops"]].rename(columns={"flops": "flops_per_token_analytic"}), on="layer", how="left")
        if "flops_warning" in layers and layers["flops_warning"].notna().any():  # marked exact, measured otherwise
            row.flops_exact = False
            row.flops_warning = "; ".join(dict.fromkeys(layers["flops_warning"].dropna()))
        prefill = layers[layers["phase"] == PREFILL]  # the run's own numbers; decode rows are in the layers table
        if "flops_measured" in layers and measured_tokens:
            layers.loc[prefill.index, "flops_measured_per_token"] = prefill["flops_measured"].astype(float) / measured_tokens
            row.flops_per_token_measured = float(prefill["flops_measured"].astype(float).sum()) / measured_tokens
            row.flops_measured_tokens = measured_tokens
        if "flops" in prefill and "tokens" in prefill and len(prefill) and prefill["tokens"].gt(0).all():
            row.flops_per_token_routed = float((prefill["flops"] / prefill["tokens"]).sum())
        if "k_mean" in prefill:
            row.k_mean = float(prefill["k_mean"].mean())
        row.update(**dispatch.memory_columns(profiler.memory_df()))
        row.peak_rss_bytes = _peak_rss()
        analysis.write_tables(conf, profiler, layers, row, results_dir, placement_source)
        frames = (*costs.add(conf, row, profiler, layers, without_prompt_pass(profiler.experts_df()), loaded), tasks)
        if conf.analysis.ablation:  # last: its passes change the routing the frames above describe
            analysis.write_ablation(conf, loaded.model, profiler, blocks.ids, row, results_dir)
        return frames
    finally:
        profiler.detach()  # the cached model goes back pristine for the next job


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _write_scan_report(ctx: JobContext, profiler) -> None:
    if ctx.job_dir:
        with contextlib.suppress(OSError):
            Path(ctx.job_dir).mkdir(parents=True, exist_ok=True)
            (Path(ctx.job_dir) / "scan.txt").write_text(profiler.scan_report() + "\n")
    log.info("%s", profiler.scan_report().splitlines()[0])


def _evaluate(conf: RunnerConfig, loaded, profiler, blocks, need_reference: bool, row: RunRecord, tracer) -> int:
    """The library's evaluation over the job's batches; fills the run's quality and speed columns and returns the
    FLOP-counted tokens."""
    from . import calibration
    from .profiler.evaluate import evaluate

    tok = loaded.tokenizer
    ids = blocks.ids
    batches = [ids[i: i + conf.batch_size] for i in range(0, ids.shape[0], conf.batch_size)]
    held = conf.selector.held_out_batches  # leading batches to calibrate on, out of the evaluation
    batches = calibration.hold_out(conf, loaded, profiler, batches, row)
    first = held * conf.batch_size  # the first evaluated block
    units = None  # the confidence intervals' unit: the document each token came from (each block its own without)
    if blocks.doc_starts:
        units = [blocks.documents_of(first + i * conf.batch_size, len(b)) for i, b in enumerate(batches)]
    result = evaluate(
        loaded.model, profiler, batches, reference=need_reference,
        pad_id=tok.pad_token_id if tok.pad_token_id not in (tok.bos_token_id, tok.eos_token_id) else None,
        measure_flops="all" if conf.measure_flops else "first", compile=conf.compile, compile_mode=conf.compile_mode,
        decode_tokens=conf.decode_tokens or 0,
        decode_pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        progress=conf.progress if conf.progress is not None else sys.stderr.isatty(),
        desc=f"{conf.model.name} k={row.topk} {conf.selector.name}",
        after_batch=(lambda i, b, s: tracer.after_batch(i + held, b, s)) if tracer is not None else None,
        units=units)
    row.update(documents=blocks.documents, **result.row())
    return result.measured_tokens
