"""Check the routing traces of a results dir against the jobs' `experts` tables, and report their size on disk.

    python benchmarks/trace_check.py outputs/results [--json out.json]

For every ok run with a trace: counting the trace's experts per (phase, layer) must give `experts.tokens` exactly,
and the trace must have one row per token and MoE layer (runs.trace_rows). Prints bytes on disk per (token, layer)
row; exits 1 on any mismatch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def check(results_dir: Path) -> list[dict]:
    import pyarrow.dataset as ds

    from runner.results import read_table

    runs = read_table(results_dir, "runs")
    out = []
    for run in runs[(runs["status"] == "ok") & runs["trace_rows"].notna()].itertuples():
        selected = ds.field("run_id") == run.run_id
        trace = read_table(results_dir, "trace", filter=selected, columns=["phase", "layer", "experts"])
        experts = read_table(results_dir, "experts", filter=selected)
        mismatched = []
        for (phase, layer), group in experts.groupby(["phase", "layer"]):
            rows = trace[(trace["phase"] == phase) & (trace["layer"] == layer)]["experts"]
            counts = np.bincount(np.concatenate(rows.to_numpy()).astype(np.int64), minlength=len(group)) \
                if len(rows) else np.zeros(len(group), np.int64)
            if counts.tolist() != group.sort_values("expert")["tokens"].astype(int).tolist():
                mismatched.append(f"{phase}/{layer}")
        files = [p for p in (results_dir / "table=trace").rglob("*.parquet") if run.run_id[:12] in p.name]
        size = sum(p.stat().st_size for p in files)
        out.append(dict(run_id=run.run_id, compile=bool(run.compile), rows=int(run.trace_rows), read=len(trace),
                        bytes=size, bytes_per_row=size / max(len(trace), 1), mismatched=mismatched))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    found = check(args.results_dir)
    for item in found:
        status = "OK" if not item["mismatched"] and item["rows"] == item["read"] else f"MISMATCH {item['mismatched']}"
        print(f"{item['run_id'][:12]} compile={item['compile']}: {item['rows']:,} rows, "
              f"{item['bytes_per_row']:.1f} bytes per (token, layer) row on disk: {status}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))
    bad = [i for i in found if i["mismatched"] or i["rows"] != i["read"]]
    if not found:
        print("no traced runs found", file=sys.stderr)
    return 1 if bad or not found else 0


if __name__ == "__main__":
    sys.exit(main())
