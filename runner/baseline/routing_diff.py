"""`python -m runner.compare A B --routing`: how far two runs' routing of the same tokens differs, per MoE layer, from
their routing traces (trace=true on both sides): eager vs compiled, fp32 vs bf16, batch 1 vs 8, one library version
vs another.

Jobs are paired by what fixes their tokens and routing rule: model, k, selector with its parameters, the data source
and slice, seq_len, weights, seed and dimension overrides; dtype, device, batching and compilation may differ (they
are what one compares). Tokens are paired by sequence (batch x batch_size + row: the same block whatever the batching)
and position, and only while both sides fed the sequence the same token ids up to that position (a decode step after
the two runs generated different tokens has other inputs, and is left out).

Per (phase, layer): the matched tokens, the mean top-k overlap |A ∩ B| / max(|A|, |B|), the share with exactly the
same set, the share with the same top-1 expert (highest combine weight; ties: the earlier slot), and per phase the
first layer (model order) where any token's set differs. Exit codes (compare's): 0 every layer's exact-set agreement
at least --min-agreement (default 1: identical routing), 1 below it, 2 bad input: a side without a trace, no pair of
jobs, or no token in common (nothing compared never passes).
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from ..profiler import caching
from ..results.io import data_run_ids

DIFF_COLUMNS = ["run_id", "phase", "layer", "batch", "row", "position", "token_id", "experts", "expert_weights"]
SETTING_COLUMNS = ("seq_len", "weights", "seed")  # what fixes the tokens besides the data source; batching may vary


class RoutingDiffError(ValueError):
    """Bad input to the routing diff (one line)."""


def routing_key(row) -> tuple:
    """What two runs must share for their routing to be compared."""
    from .sweeps import job_key

    model, k, selector, _ = job_key(row)
    data = str(row.get("dataset_source") or row.get("dataset") or "")
    return (model, k, selector, data, *(str(row.get(c)) for c in SETTING_COLUMNS), str(row.get("dims_override")))


def sequence_ids(trace: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """The trace with plain int64 keys (the table reads them as nullable Int32) and `sequence`, the block's index in
    the job: batch x batch_size + row."""
    keys = {name: trace[name].astype(np.int64) for name in ("layer", "batch", "row", "position", "token_id")}
    return trace.assign(**keys, sequence=keys["batch"] * int(batch_size) + keys["row"])


def matched_tokens(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows of A and B (suffixes _a, _b) of the same (phase, layer, sequence, position), kept while the sequence's
    token ids agree up to and including that position."""
    on = ["phase", "layer", "sequence", "position"]
    merged = a.merge(b, on=on, suffixes=("_a", "_b"))
    ids = merged.drop_duplicates(["sequence", "position"])
    differs = ids[ids["token_id_a"] != ids["token_id_b"]]
    first = differs.groupby("sequence")["position"].min()
    limit = merged["sequence"].map(first).astype(np.float64).fillna(np.inf)
    return merged[merged["position"] < limit].reset_index(drop=True)


def top1(experts: list, weights: list) -> np.ndarray:
    """Each token's expert of the highest combine weight (ties: the earlier slot); -1 for a token with none."""
    lengths = np.fromiter((len(e) for e in experts), dtype=np.int64, count=len(experts))
    out = np.full(len(experts), -1, dtype=np.int64)
    if not lengths.sum():
        return out
    token = np.repeat(np.arange(len(experts)), lengths)
    flat_e = caching.reference_string(experts)
    flat_w = np.concatenate([np.asarray(w, dtype=np.float64).reshape(-1) for w in weights])
    slot = np.arange(len(token)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    order = np.lexsort((slot, -flat_w, token))  # per token: highest weight first, then the earlier slot
    first = order[np.r_[True, token[order][1:] != token[order][:-1]]]
    out[token[first]] = flat_e[first]
    return out


def diff_frame(a: pd.DataFrame, b: pd.DataFrame, batch_a: int, batch_b: int) -> pd.DataFrame:
    """Per (phase, layer): tokens, overlap, exact, top1 of two traces (DIFF_COLUMNS) of the same inputs."""
    matched = matched_tokens(sequence_ids(a, batch_a), sequence_ids(b, batch_b))
    out = []
    for (phase, layer), rows in matched.groupby(["phase", "layer"], sort=True):
        ea, eb = list(rows["experts_a"]), list(rows["experts_b"])
        width = int(max(max((max(e, default=-1) for e in ea), default=-1),
                        max((max(e, default=-1) for e in eb), default=-1))) + 1
        sa, sb = caching.membership(ea, max(width, 1)), caching.membership(eb, max(width, 1))
        overlap = caching.set_overlap(sa, sb)
        first_a, first_b = top1(ea, list(rows["expert_weights_a"])), top1(eb, list(rows["expert_weights_b"]))
        out.append(dict(phase=phase, layer=int(layer), tokens=len(rows), overlap=float(np.nanmean(overlap))
                        if np.isfinite(overlap).any() else np.nan, exact=float((sa == sb).all(axis=1).mean()),
                        top1=float((first_a == first_b).mean())))
    frame = pd.DataFrame(out, columns=["phase", "layer", "tokens", "overlap", "exact", "top1"])
    return frame.sort_values(["phase", "layer"], key=lambda c: c != "prefill" if c.name == "phase" else c,
                             kind="stable").reset_index(drop=True)


def first_divergence(frame: pd.DataFrame) -> dict[str, int | None]:
    """phase -> the first MoE layer where some matched token's selected set differs (None: none differs)."""
    out = {}
    for phase, rows in frame.groupby("phase", sort=False):
        differs = rows[rows["exact"] < 1].sort_values("layer")
        out[str(phase)] = int(differs["layer"].iloc[0]) if len(differs) else None
    return out


def _traced_jobs(selection) -> dict[tuple, pd.Series]:
    """routing key -> the latest runs row of a job with trace rows (`data_run_id`: the run whose rows hold them)."""
    runs = selection.runs.assign(data_run_id=data_run_ids(selection.runs))
    if "timestamp" in runs:
        runs = runs.sort_values("timestamp", kind="stable")
    traced = pd.to_numeric(runs["trace_rows"], errors="coerce").fillna(0) > 0 if "trace_rows" in runs else \
        pd.Series(False, index=runs.index)
    return {routing_key(row): row for _, row in runs[traced].iterrows()}


def _trace_of(selection, run_id: str) -> pd.DataFrame:
    import pyarrow.dataset as ds

    from ..results import read_table

    return read_table(selection.root, "trace", filter=ds.field("run_id") == run_id, columns=DIFF_COLUMNS)


def render(blocks: list[tuple[str, pd.DataFrame]], min_agreement: float) -> tuple[str, int]:
    """One table (job, phase, layer, tokens, overlap, exact, top1, check) and the failed layers."""
    rows, failed = [], 0
    for label, frame in blocks:
        for i, r in enumerate(frame.itertuples()):
            ok = r.exact >= min_agreement
            failed += not ok
            rows.append((label if i == 0 else "", r.phase, str(r.layer), f"{r.tokens:,d}", f"{r.overlap:.4f}",
                         f"{r.exact:.4f}", f"{r.top1:.4f}", "ok" if ok else "FAIL"))
    header = ("job", "phase", "layer", "tokens", "overlap", "exact set", "top-1", "check")
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(f"{v:<{w}}" if c < 2 else f"{v:>{w}}" for c, (v, w) in enumerate(zip(line, widths))).rstrip()
             for line in [header, tuple("-" * w for w in widths), *rows]]
    return "\n".join(lines), failed


def diff_sources(a: str, b: str, results_dir: str | None = None):
    """(the two Selections, [(job label, diff_frame)] of their paired traced jobs, jobs traced only in A / only in B);
    RoutingDiffError or ResultsNotFound (one line) when nothing can be compared."""
    from ..results.select import select

    sides = [select(source, results_dir) for source in (a, b)]
    jobs = [_traced_jobs(side) for side in sides]
    for side, name, found in zip(sides, "AB", jobs):
        if not found:
            raise RoutingDiffError(f"{name} ({side.label}) has no traced job; run it with trace=true")
    keys = [key for key in jobs[0] if key in jobs[1]]
    if not keys:
        raise RoutingDiffError("no job of A has the same model, k, selector, data, seq_len, weights and seed as "
                               "a job of B; --routing compares runs of the same inputs")
    blocks = []
    for key in keys:
        row_a, row_b = jobs[0][key], jobs[1][key]
        frame = diff_frame(_trace_of(sides[0], row_a["data_run_id"]), _trace_of(sides[1], row_b["data_run_id"]),
                           int(row_a["batch_size"]), int(row_b["batch_size"]))
        label = f"{key[0]} k={key[1]} {key[2]}"
        if frame.empty:
            raise RoutingDiffError(f"{label}: no token of A matches one of B (same sequence, position and token "
                                   "ids); --routing compares runs of the same inputs")
        blocks.append((label, frame))
    return sides, blocks, [len(mine) - len(keys) for mine in jobs]


def main(args) -> int:
    """The --routing mode of runner.compare (args: its parsed arguments)."""
    from . import EXIT_DIFF, EXIT_OK, EXIT_USAGE
    from ..errors import ResultsNotFound

    try:
        if not 0 <= args.min_agreement <= 1:
            raise RoutingDiffError(f"--min-agreement must be between 0 and 1, got {args.min_agreement}")
        sides, blocks, unmatched = diff_sources(args.a, args.b, args.results_dir)
    except (ResultsNotFound, RoutingDiffError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    table, failed = render(blocks, args.min_agreement)
    print(f"A: {sides[0].label}\nB: {sides[1].label}\n{table}")
    for label, frame in blocks:
        print(f"{label}: first diverging layer: " + ", ".join(
            f"{phase} {'none' if layer is None else layer}" for phase, layer in first_divergence(frame).items()))
    print(f"compare --routing {'FAILED' if failed else 'OK'}: {len(blocks)} matched job(s), {failed} layer(s) with "
          f"exact-set agreement below {args.min_agreement:g}, {unmatched[0]} traced only in A, {unmatched[1]} traced "
          "only in B")
    return EXIT_DIFF if failed else EXIT_OK
