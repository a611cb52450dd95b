"""A job's routing analyses (`analysis=...`) and routing trace (`trace=true`): what the profiler is asked to record,
the tables written from it (coactivation, transitions, placement, trace) and the runs columns that sum them up.

The definitions are in runner/profiler/metrics.py and docs/metrics.md; the table columns in
runner/results/analysis_records.py. Numbers come from the profiler's frames and drained numpy arrays: nothing here
touches a tensor.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

from .. import results
from ..errors import ConfigError, ResultsNotFound, RunnerError
from ..results import RunRecord
from ..profiler.phases import DECODE, PREFILL
from ..profiler.evaluate import without_prompt_pass
from ..config.schema import AnalysisConfig, RunnerConfig


def analyses_of(config: AnalysisConfig):
    """The library's Analyses for an `analysis` config."""
    from ..profiler import Analyses

    return Analyses(capacity_factors=tuple(float(f) for f in config.capacity_factors),
                    coactivation=config.coactivation, transitions=config.transitions,
                    vocab=config.vocab_specialization, min_token_count=config.min_token_count,
                    lookahead=config.lookahead)


# -- tables and summary columns ------------------------------------------------------------------------------------
def write_tables(conf: RunnerConfig, profiler, layers, row: RunRecord, results_dir: str, source=None) -> None:
    """Write the analysis tables the config asks for and fill the runs columns that sum them up (prefill phase).
    source: placement_source()'s result, read before the model loaded (default: read now)."""
    a = conf.analysis
    row.analysis = a.name
    prefill = layers[layers["phase"] == PREFILL] if "phase" in layers else layers
    for column, summary in (("drop_rate_cf1_25", "drop_rate_cf1_25"), ("jaccard_next", "jaccard_mean"),
                            ("jaccard_random", "jaccard_random_mean")):
        values = prefill[column].dropna() if column in prefill else []
        if len(values):
            setattr(row, summary, float(values.mean()))
    row.update(**layer_percentiles(prefill))
    frames = {}
    if a.coactivation:
        frames["coactivation"] = profiler.coactivation_df()
    if a.transitions:
        frames["transitions"] = profiler.transitions_df()
    if a.placement:
        fit_on, label = source or placement_source(a.placement_from, conf.model.name, results_dir)
        try:
            placed = profiler.placement_df(ep_sizes=a.ep_sizes, redundant=a.redundant_experts, fit_on=fit_on,
                                           fitted_on=label)
        except ValueError as exc:  # the fitted-on run is of another shape
            raise ConfigError(f"analysis.placement_from={a.placement_from}: {exc}") from None
        frames["placement"] = placed
        own = placed[(placed["phase"] == PREFILL) & (placed["placement"] == "balanced") & (placed["fitted_on"] == "self")]
        if len(own):
            largest = int(own["ep_size"].max())
            row.update(ep_size_max=largest,
                       ep_imbalance_balanced=float(own.loc[own["ep_size"] == largest, "imbalance"].mean()))
    if a.cache:  # the trace is closed and on disk: replay it (the run's own rows only)
        from ..results import cache_replay as cache

        frames.update(cache.tables(cache.read_trace(results_dir, [row.run_id]), cache.experts_per_layer(layers)))
    for table, frame in frames.items():
        frame = without_prompt_pass(frame)  # generate()'s prompt pass repeats the prefill tokens (as in layers)
        results.write_part(results_dir, table, conf.model.name, list(results.rows_from_frame(frame, row.keys())),
                           row.config_hash, row.run_id)


def write_ablation(conf: RunnerConfig, model, profiler, ids, row: RunRecord, results_dir: str) -> None:
    """analysis.ablation: table=ablation from the first `analysis.ablation_batches` evaluated batches (after any held
    out for calibration), with the model's own routing at the job's top-k."""
    from ..profiler.ablation import expert_ablation

    size, first = conf.batch_size, conf.selector.held_out_batches * conf.batch_size
    batches = [ids[i: i + size] for i in range(first, first + conf.analysis.ablation_batches * size, size)]
    frame = expert_ablation(model, profiler, [b for b in batches if len(b)])
    results.write_part(results_dir, "ablation", conf.model.name, list(results.rows_from_frame(frame, row.keys())),
                       row.config_hash, row.run_id)


# the per-layer balance metrics summarised across layers (Megatron-LM #2398): the median and the bad tail
LAYER_PERCENTILES = (("load_max_mean", (50, 95)), ("load_cv", (50, 95)), ("load_jain", (5, 50)),
                     ("load_entropy", (5, 50)))


def layer_percentiles(layers) -> dict[str, float]:
    """`<metric>_p<q>` runs columns: percentiles over the MoE layers (numpy's linear interpolation) of the balance
    metrics, from one phase's layers rows; layers that saw no token are left out."""
    out = {}
    for metric, quantiles in LAYER_PERCENTILES:
        values = layers[metric].dropna().to_numpy(float) if metric in layers else []
        if len(values):
            for q in quantiles:
                out[f"{metric}_p{q:02d}"] = float(np.percentile(values, q))
    return out


def placement_source(spec: str | None, model: str, results_dir: str):
    """The expert loads to fit placements on (`analysis.placement_from`): (experts rows of `model`, prefill phase,
    summed over the runs found; their label) or (None, "self"). spec: a results dir, a sweep dir, or a sweep / run id
    (or `latest`) in this job's results dir."""
    if spec is None:
        return None, "self"
    path = Path(spec).expanduser()
    try:
        if (path / "table=runs").is_dir():
            experts = results.load("experts", sweep="latest", results_dir=path)
        elif path.is_dir():
            experts = results.load("experts", sweep=path)
        else:
            experts = results.load("experts", sweep=spec, results_dir=results_dir)
    except (ResultsNotFound, ValueError) as exc:
        raise ConfigError(f"analysis.placement_from={spec}: {exc}") from None
    experts = experts[(experts["model"] == model) & (experts["phase"] == PREFILL)]
    if experts.empty:
        raise ConfigError(f"analysis.placement_from={spec}: no prefill expert loads of model {model!r} there; "
                          "point it at a run or sweep of the same model")
    runs = experts["run_id"].unique()
    label = runs[0] if len(runs) == 1 else f"{len(runs)} runs of sweep {experts['sweep_id'].dropna().iloc[0]}" \
        if experts["sweep_id"].notna().any() else f"{len(runs)} runs"
    loads = experts.groupby(["layer", "expert"], as_index=False)["tokens"].sum()
    return loads, str(label)


# -- the routing trace ---------------------------------------------------------------------------------------------
class TraceWriter:
    """Drains the profiler's routing trace after each batch into `table=trace` row groups (results.StreamedPart):
    the run's trace is never held whole. Token ids, positions and documents come from the batch itself: the router
    sees a prefill call's tokens as the batch flattened row by row, a decode step's as one token per row."""

    def __init__(self, conf: RunnerConfig, profiler, blocks, row: RunRecord, results_dir: str):
        self.profiler, self.blocks, self.row = profiler, blocks, row
        self.seq_len, self.batch_size, self.max_tokens = conf.seq_len, conf.batch_size, conf.trace.max_tokens
        self.layer_ids = [layer.layer_id for layer in profiler.layers]
        self.written = [0] * len(self.layer_ids)
        self.skipped = [0] * len(self.layer_ids)
        self.part = results.StreamedPart(results_dir, "trace", conf.model.name, row.config_hash, row.run_id)
        calls = 2 if conf.decode_tokens else 1  # generate() runs the prompt again, under its own phase
        rows = min(conf.batch_size, int(blocks.ids.shape[0]))  # the largest batch that exists, not the one asked for
        profiler.start_trace(capacity=rows * (conf.seq_len * calls + conf.decode_tokens), probs=conf.trace.logits)

    def after_batch(self, index: int, batch, sequences) -> None:
        ids = batch.cpu().numpy()
        generated = sequences.cpu().numpy() if sequences is not None else None
        phases = self.profiler.trace_phases
        for position, drained in enumerate(self.profiler.drain_trace()):
            if drained["overflow"]:
                raise RunnerError(f"trace: MoE layer {self.layer_ids[position]} routed {drained['overflow']} more "
                                  "tokens in one batch than expected; report this with the model's name")
            phase = np.asarray(phases, dtype=object)[drained["phase"]]
            for name in (PREFILL, DECODE):
                keep = phase == name
                if keep.any():
                    self._write(position, name, index, ids, generated, {k: v[keep] for k, v in drained.items()
                                                                         if k != "overflow"})

    def _write(self, position: int, phase: str, index: int, ids, generated, drained: dict) -> None:
        import pyarrow as pa

        n, rows = len(drained["experts"]), ids.shape[0]
        token = np.arange(n)
        if phase == PREFILL:
            if n != ids.size:
                raise RunnerError(f"trace: MoE layer {self.layer_ids[position]} routed {n} tokens for a batch of "
                                  f"{ids.size}; this architecture's tokens cannot be placed in the trace")
            row_of, position_of = token // ids.shape[1], token % ids.shape[1]
            token_id = ids[row_of, position_of]
            first_block = index * self.batch_size
            document = np.concatenate([self.blocks.documents_at(first_block + r, np.arange(ids.shape[1]))
                                       for r in range(rows)])
        else:
            row_of, step = token % rows, token // rows
            position_of = ids.shape[1] + step
            token_id = generated[row_of, np.minimum(position_of, generated.shape[1] - 1)]
            document = None
        room = max(self.max_tokens - self.written[position], 0)
        if n > room:
            self.skipped[position] += n - room
            n = room
        if n == 0:
            return
        experts, weights = drained["experts"][:n], drained["weights"][:n]
        valid = experts >= 0
        offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int32))
        columns = dict(
            phase=pa.array([phase] * n), layer=pa.array(np.full(n, self.layer_ids[position], np.int32)),
            batch=pa.array(np.full(n, index, np.int32)), row=pa.array(row_of[:n].astype(np.int32)),
            position=pa.array(position_of[:n].astype(np.int32)),
            token_id=pa.array(token_id[:n].astype(np.int64)),
            document=pa.array(document[:n].astype(np.int64)) if document is not None else pa.nulls(n, pa.int64()),
            k=pa.array(valid[:n].sum(1).astype(np.int32)),
            experts=pa.ListArray.from_arrays(offsets, pa.array(experts[valid].astype(np.int16))),
            expert_weights=pa.ListArray.from_arrays(offsets, pa.array(weights[valid].astype(np.float16))))
        if "probs" in drained:
            probs = drained["probs"][:n]
            columns["router_probs"] = pa.ListArray.from_arrays(
                pa.array(np.arange(0, probs.size + 1, probs.shape[1], dtype=np.int32)), pa.array(probs.reshape(-1)))
        keys = {name: pa.array([value] * n, type=results.SCHEMAS["trace"].field(name).type)
                for name, value in self.row.keys().items()}
        schema = results.SCHEMAS["trace"]
        data = {**keys, **columns}
        self.part.write(pa.table([data.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema))
        self.written[position] += n

    def close(self) -> None:
        self.profiler.stop_trace()
        self.part.close()
        self.row.update(trace_rows=self.part.rows, trace_tokens_skipped=max(self.skipped))

    def abort(self) -> None:
        self.profiler.stop_trace()
        self.part.abort()

