"""The job's measurement: the library's evaluation over the batches (after the calibration batches a compute-matched
selector holds out), the trace of them, the eval tasks; then the layers frame with FLOPs per token, checked finite."""
from __future__ import annotations

import sys
import warnings

from . import eval_harness
from ..config.checks import check_finite
from ..config.schema import RunnerConfig
from ..profiler.phases import PREFILL
from ..results import RunRecord
from .threads import cpu_threads, intra_op_threads


def with_analytic_flops(layers, analytic):
    return layers.merge(analytic[["layer", "flops"]].rename(columns={"flops": "flops_per_token_analytic"}),
                        on="layer", how="left")


def measure(conf: RunnerConfig, loaded, profiler, blocks, routing_changed: bool, row: RunRecord, results_dir: str):
    """The library's evaluation over the batches (and the trace of them), then the eval tasks; returns the
    FLOP-counted tokens and the tasks frame."""
    from . import analysis_tables as analysis

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
    return measured_tokens, tasks


def layer_table(profiler, analytic, measured_tokens: int, row: RunRecord):
    """The layers frame (the prompt pass of generate() left out) with FLOPs per token; the run's prefill numbers on
    the row (decode rows stay in the layers table)."""
    from ..profiler.evaluate import without_prompt_pass

    with warnings.catch_warnings():  # the library's warning of non-finite routers: the one line is check_finite's
        warnings.filterwarnings("ignore", message=r"MoE layer\(s\) .*: non-finite router scores")
        profiler_layers = without_prompt_pass(profiler.layers_df())
    check_finite(row.loss, profiler_layers)  # NaN routers: a failed job, never imbalance stored as real
    layers = with_analytic_flops(profiler_layers, analytic)
    if "flops_warning" in layers and layers["flops_warning"].notna().any():  # marked exact, measured otherwise
        row.flops_exact = False
        row.flops_warning = "; ".join(dict.fromkeys(layers["flops_warning"].dropna()))
    prefill = layers[layers["phase"] == PREFILL]
    if "flops_measured" in layers and measured_tokens:
        layers.loc[prefill.index, "flops_measured_per_token"] = prefill["flops_measured"].astype(float) / measured_tokens
        row.flops_per_token_measured = float(prefill["flops_measured"].astype(float).sum()) / measured_tokens
        row.flops_measured_tokens = measured_tokens
    if "flops" in prefill and "tokens" in prefill and len(prefill) and prefill["tokens"].gt(0).all():
        row.flops_per_token_routed = float((prefill["flops"] / prefill["tokens"]).sum())
    if "k_mean" in prefill:
        row.k_mean = float(prefill["k_mean"].mean())
    return layers


def _evaluate(conf: RunnerConfig, loaded, profiler, blocks, need_reference: bool, row: RunRecord, tracer) -> int:
    """The library's evaluation over the job's batches; fills the run's quality and speed columns and returns the
    FLOP-counted tokens."""
    from . import calibration
    from ..profiler.evaluate import evaluate

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
