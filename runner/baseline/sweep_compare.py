"""`python -m runner.compare A B`: two sweeps (or results dirs) side by side, job by job, as a regression gate.

Jobs are matched by what changes their numbers: model, k, selector and its parameters, the data source and slice,
seq_len, batching, dtype, device, weights, seed and dimension overrides (runner.baseline.job_key, the key a pinned
sweep's baseline uses). One table: MoE FLOPs/token, loss, KL, top-1 agreement, tokens/s (TTFT/TPOT when decoded) and
the per-layer load metrics (mean over layers, with the layer that moved most), each A, B and delta; then the jobs
only one side has. A job of A that B lacks is a difference (--allow-missing: it is not); no job in common fails.

Tolerances are the FLOPs baseline's (runner/baseline/entries.py, docs/baselines.md#tolerances): status and analytic
FLOPs exact, measured FLOPs exact under the model's own routing and ROUTING_RTOL under a dynamic selector, loss
SWEEP_LOSS_RTOL (--loss-rtol). Timing is checked only with --time-ratio R: B fails when its tokens/s is below A's / R
or its TTFT / TPOT above A's x R. KL, top-1 and the load metrics are shown, not checked.

Exit codes (the baseline's): 0 no difference beyond a tolerance, 1 differences, 2 bad input (one line on stderr).

`--routing` compares the two sides' routing traces instead, token by token (runner/baseline/routing_diff.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Sequence

from . import EXIT_DIFF, EXIT_OK, EXIT_USAGE, ROUTING_RTOL, SWEEP_LOSS_RTOL, BaselineError, job_key
from ..errors import ResultsNotFound
from ..profiler.phases import PREFILL
from ..profiler.selector_registry import OWN_ROUTING

# (runs column, label, check): exact | routing (exact under own routing, ROUTING_RTOL otherwise) | loss | faster |
# slower (timing, with --time-ratio) | "" (shown only)
RUN_METRICS = (("status", "status", "exact"), ("flops_per_token_analytic", "MoE FLOPs/tok analytic", "exact"),
               ("flops_per_token_measured", "MoE FLOPs/tok measured", "routing"),
               ("flops_per_token_routed", "MoE FLOPs/tok routed", ""), ("loss", "loss", "loss"), ("kl", "KL", ""),
               ("top1_agreement", "top-1 agreement", ""), ("tokens_per_s", "tokens/s", "faster"),
               ("ttft_ms", "TTFT ms", "slower"), ("tpot_ms", "TPOT ms", "slower"))
LAYER_METRICS = (("k_mean", "k_mean"), ("router_entropy", "router entropy"), ("load_cv", "load CV"),
                 ("dead_experts", "dead experts"))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _show(value: Any) -> str:
    number = _number(value)
    if number is None:
        missing = value is None or str(value) in ("<NA>", "nan", "None")
        return "-" if missing else str(value)
    if abs(number) >= 1000:
        return f"{number:,.0f}" if number.is_integer() else f"{number:,.1f}"
    return f"{number:.6g}"


def _delta(a: Any, b: Any) -> str:
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return "" if str(a) == str(b) else "changed"
    if x == y:
        return "0"
    relative = f" ({(y - x) / abs(x) * 100:+.3g}%)" if x else ""
    return (f"{int(y - x):+,d}" if x.is_integer() and y.is_integer() else f"{y - x:+.4g}") + relative


def check(kind: str, a: Any, b: Any, selector: str, loss_rtol: float, time_ratio: float | None) -> tuple[str, bool]:
    """(the tolerance as shown, whether B is within it of A)."""
    x, y = _number(a), _number(b)
    if kind == "exact":
        return "exact", (x == y) if x is not None and y is not None else str(a) == str(b)
    if kind == "routing" and selector == OWN_ROUTING:
        kind, rtol = "exact", 0.0
    else:
        rtol = ROUTING_RTOL if kind == "routing" else loss_rtol if kind == "loss" else None
    if rtol is not None:
        shown = "exact" if rtol == 0 else f"rtol {rtol:g}"
        if x is None or y is None:
            return shown, x is None and y is None
        return shown, abs(y - x) <= rtol * abs(x)
    if kind in ("faster", "slower") and time_ratio is not None:
        if x is None or y is None or x <= 0 or y <= 0:
            return f"x{time_ratio:g}", True
        slower = x / y if kind == "faster" else y / x  # how many times slower B is than A
        return f"x{time_ratio:g}", slower <= time_ratio
    return "", True


def layer_means(selection) -> dict[str, Any]:
    """run_id -> the prefill layers rows of that run (layer-indexed), for the load metrics."""
    layers = selection.table("layers")
    if layers is None:
        return {}
    if "phase" in layers:
        layers = layers[layers["phase"] == PREFILL]
    return {run_id: rows.set_index("layer") for run_id, rows in layers.groupby("run_id")}


def _jobs(selection) -> dict[tuple, Any]:
    runs = selection.runs.sort_values("timestamp", kind="stable") if "timestamp" in selection.runs else selection.runs
    return {job_key(row): row for _, row in runs.iterrows()}  # a key seen twice: the latest row


def label(key: tuple, settings_shown: bool) -> str:
    model, k, selector, setting = key
    return f"{model} k={k} {selector}" + (f" [{setting}]" if settings_shown else "")


def rows_for(key: tuple, a, b, layers_a, layers_b, loss_rtol: float, time_ratio: float | None) -> list[tuple]:
    """(metric, A, B, delta, tolerance, verdict, note) for one matched job; verdict FAIL, ok, or '' (not
    checked); the note of a per-layer metric names the layer that moved most."""
    out = []
    selector = key[2]
    for column, name, kind in RUN_METRICS:
        va, vb = a.get(column), b.get(column)
        if column == "status":  # a resumed job reports the run it reused, as the sweep summary and baseline do
            va, vb = ("ok" if v == "skipped" else v for v in (va, vb))
        if _number(va) is None and _number(vb) is None and kind != "exact":
            continue  # not recorded on either side (TTFT without decode)
        tolerance, within = check(kind, va, vb, selector, loss_rtol, time_ratio)
        verdict = ("ok" if within else "FAIL") if tolerance else ""
        out.append((name, _show(va), _show(vb), _delta(va, vb), tolerance, verdict, ""))
    la, lb = layers_a.get(a["run_id"]), layers_b.get(b["run_id"])
    if la is not None and lb is not None:
        for column, name in LAYER_METRICS:
            if column not in la or column not in lb:
                continue
            x, y = la[column].astype(float), lb[column].astype(float)
            moved = (y - x).abs().dropna()
            where = f"most at layer {moved.idxmax()}: {_delta(x[moved.idxmax()], y[moved.idxmax()])}" \
                if len(moved) and moved.max() > 0 else ""
            out.append((f"{name} (mean of layers)", _show(x.mean()), _show(y.mean()), _delta(x.mean(), y.mean()),
                        "", "", where))
    return out


def render(table: list[tuple]) -> str:
    header = ("job", "metric", "A", "B", "delta", "tolerance", "check", "note")
    rows = [header, *table]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(f"{str(v):<{w}}" if c in (0, 1, 4, 7) else f"{str(v):>{w}}"
                               for c, (v, w) in enumerate(zip(row, widths))).rstrip())  # text left, numbers right
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.compare",
        description="Compare two sweeps job by job. Exit codes: 0 no difference beyond a tolerance, 1 differences, "
                    "2 bad input.")
    parser.add_argument("a", help="sweep directory, results directory, sweep id or `latest`")
    parser.add_argument("b", help="the same, for the other side")
    parser.add_argument("--results-dir", default=None, help="where sweep ids and `latest` are looked up")
    parser.add_argument("--loss-rtol", type=float, default=SWEEP_LOSS_RTOL,
                        help=f"relative tolerance on loss (default {SWEEP_LOSS_RTOL:g}, the sweep baseline's)")
    parser.add_argument("--time-ratio", type=float, default=None,
                        help="check timing: fail when B is more than this many times slower than A (tokens/s, TTFT, "
                             "TPOT); default: timing not checked")
    parser.add_argument("--routing", action="store_true",
                        help="compare the routing traces instead (trace=true on both sides): per layer, the top-k "
                             "overlap, exact-set and top-1 agreement of the tokens both fed (runner/baseline/routing_diff.py)")
    parser.add_argument("--min-agreement", type=float, default=1.0,
                        help="--routing: fail a layer whose exact-set agreement is below this (default 1: identical)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="jobs of A that B lacks are not a difference (default: they fail the comparison)")
    args = parser.parse_args(argv)
    if args.routing:
        from . import routing_diff

        return routing_diff.main(args)
    from ..results.select import select

    try:
        if not args.loss_rtol >= 0 or not math.isfinite(args.loss_rtol):
            raise BaselineError(f"--loss-rtol must be a number >= 0, got {args.loss_rtol}")
        if args.time_ratio is not None and not (args.time_ratio >= 1 and math.isfinite(args.time_ratio)):
            raise BaselineError(f"--time-ratio must be a number >= 1, got {args.time_ratio}")
        sides = [select(source, args.results_dir) for source in (args.a, args.b)]
    except (ResultsNotFound, BaselineError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    jobs_a, jobs_b = (_jobs(side) for side in sides)
    layers_a, layers_b = (layer_means(side) for side in sides)
    matched = [key for key in jobs_a if key in jobs_b]
    settings = {key[3] for key in [*jobs_a, *jobs_b]}
    table = []
    for key in matched:
        for i, row in enumerate(rows_for(key, jobs_a[key], jobs_b[key], layers_a, layers_b, args.loss_rtol,
                                         args.time_ratio)):
            table.append((label(key, len(settings) > 1) if i == 0 else "", *row))
    print(f"A: {sides[0].label}\nB: {sides[1].label}")
    if len(settings) == 1:
        print(f"settings (every job): {next(iter(settings))}")
    if table:
        print(render(table))
    only = [(side, [key for key in jobs if key not in other])
            for side, jobs, other in (("A", jobs_a, jobs_b), ("B", jobs_b, jobs_a))]
    for side, keys in only:
        if keys:
            print(f"only in {side} ({len(keys)}):\n" + "\n".join(f"  {label(key, len(settings) > 1)}" for key in keys))
    failed = sum(row[6] == "FAIL" for row in table)
    missing = len(only[0][1]) if not args.allow_missing else 0
    if not matched:  # a gate that compared nothing must not pass
        print(f"compare FAILED: 0 matched job(s): A and B have no job in common, nothing was compared "
              f"({len(only[0][1])} only in A, {len(only[1][1])} only in B); compare sweeps of the same jobs")
        return EXIT_DIFF
    summary = (f"{len(matched)} matched job(s), {failed} difference(s) beyond tolerance, "
               f"{len(only[0][1])} only in A, {len(only[1][1])} only in B")
    if missing and not failed:
        summary += " (a job of A missing from B is a difference; --allow-missing accepts it)"
    print(f"compare {'FAILED' if failed or missing else 'OK'}: {summary}")
    return EXIT_DIFF if failed or missing else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
