"""Expert-cache simulation and decode locality from a run's routing trace (`analysis.cache=true trace=true`, or
`python -m runner.cache <results dir | sweep dir | sweep id | run id>` on runs traced before): the `cache` table (hit
rate against capacity C = 1..E per layer, phase and policy) and the `locality` table (adjacent-token overlap).

The replay order is the order a server meets the tokens: prefill one sequence after another (batch, then row, then
position), decode step by step with the batch's rows interleaved (batch, then position, then row); each token's
experts in the router's slot order. Algorithms: runner/profiler/caching.py; definitions: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
import pandas as pd

from ..profiler import caching
from ..profiler.phases import DECODE, PREFILL

TRACE_COLUMNS = ["run_id", "phase", "layer", "batch", "row", "position", "experts"]


def serving_order(trace: pd.DataFrame) -> pd.DataFrame:
    """The trace rows in the order they are served: prefill by (batch, row, position), decode by (batch, position,
    row)."""
    prefill = trace[trace["phase"] == PREFILL].sort_values(["layer", "batch", "row", "position"], kind="stable")
    decode = trace[trace["phase"] == DECODE].sort_values(["layer", "batch", "position", "row"], kind="stable")
    return pd.concat([prefill, decode], ignore_index=True)


def _layer_groups(trace: pd.DataFrame):
    for (phase, layer), rows in serving_order(trace).groupby(["phase", "layer"], sort=False):
        yield str(phase), int(layer), rows


def cache_frame(trace: pd.DataFrame, num_experts: dict[int, int], policies=caching.POLICIES) -> pd.DataFrame:
    """One row per (phase, layer, policy, capacity C = 1..E) of the trace replayed in serving order."""
    out = []
    for phase, layer, rows in _layer_groups(trace):
        experts = int(num_experts[layer])
        refs = caching.reference_string(list(rows["experts"]))
        if not len(refs):
            continue
        cold = len(np.unique(refs))  # first references: a miss under any policy and capacity
        for policy, hits in caching.simulate(refs, experts, policies).items():
            capacity = np.arange(1, experts + 1)
            out.append(pd.DataFrame(dict(
                phase=phase, layer=layer, policy=policy, capacity=capacity, num_experts=experts,
                capacity_fraction=capacity / experts, tokens=len(rows), references=len(refs), hits=hits,
                hit_rate=hits / len(refs), cold_misses=cold)))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def locality_frame(trace: pd.DataFrame, num_experts: dict[int, int]) -> pd.DataFrame:
    """Adjacent-token overlap per (phase, layer): |S_t ∩ S_t-1| / |S_t| over the pairs of consecutive positions of one
    sequence (decode: consecutive steps of one row), and its value under uniform random routing, |S_t-1| / E."""
    out = []
    for phase, layer, rows in _layer_groups(trace):
        rows = rows.sort_values(["batch", "row", "position"], kind="stable")
        chosen = caching.membership(list(rows["experts"]), int(num_experts[layer]))
        key = rows[["batch", "row", "position"]].to_numpy(np.int64)
        pair = (key[1:, 0] == key[:-1, 0]) & (key[1:, 1] == key[:-1, 1]) & (key[1:, 2] == key[:-1, 2] + 1)
        now, before = chosen[1:][pair], chosen[:-1][pair]
        size = now.sum(axis=1)
        pair_ok = size > 0  # a token with no expert (every slot dropped) has no overlap to speak of
        overlap = (now & before).sum(axis=1)[pair_ok] / size[pair_ok]
        random = before.sum(axis=1)[pair_ok] / int(num_experts[layer])
        out.append(dict(phase=phase, layer=layer, pairs=int(pair_ok.sum()),
                        overlap=float(overlap.mean()) if len(overlap) else np.nan,
                        overlap_random=float(random.mean()) if len(random) else np.nan))
    return pd.DataFrame(out)


def experts_per_layer(layers: pd.DataFrame) -> dict[int, int]:
    """layer -> routed experts E, from a layers table (or frame)."""
    rows = layers.dropna(subset=["num_experts"]).drop_duplicates("layer")
    return {int(layer): int(e) for layer, e in zip(rows["layer"], rows["num_experts"])}


def read_trace(results_dir, run_ids: list[str]) -> pd.DataFrame:
    import pyarrow.dataset as ds

    from . import read_table

    return read_table(results_dir, "trace", filter=ds.field("run_id").isin(list(run_ids)), columns=TRACE_COLUMNS)


def tables(trace: pd.DataFrame, num_experts: dict[int, int]) -> dict[str, pd.DataFrame]:
    """The `cache` and `locality` frames of one run's trace."""
    missing = sorted(set(int(x) for x in trace["layer"].unique()) - set(num_experts))
    if missing:
        raise ValueError(f"the trace has MoE layers {missing} that the run's layers table does not list")
    return {"cache": cache_frame(trace, num_experts), "locality": locality_frame(trace, num_experts)}


# -- the command ---------------------------------------------------------------------------------------------------
def summary(cache: pd.DataFrame, locality: pd.DataFrame) -> pd.DataFrame:
    """Per (phase, layer): hit rates at C = E/4 and E/2 per policy, and the adjacent-token overlap."""
    out = []
    for (phase, layer), rows in cache.groupby(["phase", "layer"], sort=False):
        experts = int(rows["num_experts"].iloc[0])
        line = dict(phase=phase, layer=layer, E=experts)
        for fraction, name in ((4, "E/4"), (2, "E/2")):
            at = rows[rows["capacity"] == max(experts // fraction, 1)]
            for policy, rate in zip(at["policy"], at["hit_rate"]):
                line[f"{policy}@{name}"] = rate
        local = locality[(locality["phase"] == phase) & (locality["layer"] == layer)] if len(locality) else locality
        if len(local):
            line.update(overlap=local["overlap"].iloc[0], overlap_random=local["overlap_random"].iloc[0])
        out.append(line)
    return pd.DataFrame(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.cache",
        description="Replay the routing trace of traced runs through expert caches (LRU, LFU, Belady's OPT) at every "
                    "capacity, print hit rates at E/4 and E/2 and the adjacent-token overlap, and write the `cache` "
                    "and `locality` tables of runs that have none. Exit codes: 0 done, 2 bad input.")
    parser.add_argument("source", help="results directory, sweep directory, sweep id, run id or `latest`")
    parser.add_argument("--results-dir", default=None, help="where sweep ids, run ids and `latest` are looked up")
    parser.add_argument("--no-write", action="store_true", help="print only; write no table")
    args = parser.parse_args(argv)
    from .. import results
    from ..errors import ResultsNotFound, RunnerError
    from .select import select

    try:
        selection = select(args.source, args.results_dir)
        run_ids = selection.data_run_ids()
        trace = read_trace(selection.root, run_ids)
        if trace.empty:
            raise ResultsNotFound(f"{selection.label}: no trace rows; run with trace=true (and analysis.cache=true "
                                  "to simulate during the run)")
        layers = selection.table("layers")
        if layers is None:
            raise ResultsNotFound(f"{selection.label}: no layers rows, so the experts per layer are unknown")
        written_before = {name: set(frame["run_id"]) if (frame := selection.table(name)) is not None else set()
                          for name in ("cache", "locality")}
        runs = selection.runs.set_index("run_id")
        for run_id, rows in trace.groupby("run_id", sort=False):
            frames = tables(rows, experts_per_layer(layers[layers["run_id"] == run_id]))
            job = runs.loc[run_id] if run_id in runs.index else None
            print(f"run {run_id}" + (f" ({job['model']}, k={job['topk']}, {job['selector']})" if job is not None
                                     else ""))
            print(summary(frames["cache"], frames["locality"]).to_string(index=False, float_format="%.4f"))
            if args.no_write or job is None:
                continue
            keys = {name: job.get(name) for name in results.KEY_COLUMNS if name != "run_id"}
            keys["run_id"] = run_id
            for name, frame in frames.items():
                if run_id in written_before[name] or frame.empty:
                    continue
                path = results.write_part(selection.root, name, str(job["model"]),
                                          list(results.rows_from_frame(frame, keys)), job.get("config_hash"), run_id)
                print(f"wrote {path}")
    except (ResultsNotFound, RunnerError, ValueError) as exc:
        print(f"cache: error: {exc}", file=sys.stderr)
        return 2
    return 0
