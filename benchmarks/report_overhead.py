"""What the end-of-sweep report adds to a sweep's wall time (BENCHMARKS.md, "The sweep report").

    python benchmarks/report_overhead.py [--repeats 5] [--out benchmarks/results]

Runs the 12-job tiny sweep `model=olmoe_tiny topk=1,2,4,8 selector=router,kneedle,cumsum -m` with report=false and
report=true, alternating, each in a fresh process and a fresh output dir; records each run's wall time and, with the
report on, the report's own seconds as the sweep prints them (`report: <path> (1.2 s)`). The overhead is the report's
seconds over the rest of the same run's wall time (robust on a shared machine), and the median wall times of the two
settings side by side. Writes report-overhead-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ("model=olmoe_tiny", "topk=1,2,4,8", "selector=router,kneedle,cumsum", "-m")


def run_sweep(report: bool) -> tuple[float, float | None]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "runner", f"report={str(report).lower()}", *SWEEP], cwd=ROOT,
                              env={**os.environ, "RUNNER_OUT": out}, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    found = re.search(r"^report: .* \((\d+\.\d) s\)$", done.stdout, re.M)
    return wall, float(found.group(1)) if found else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    walls: dict[bool, list[float]] = {False: [], True: []}
    shares = []
    for _ in range(args.repeats):
        for report in (False, True):
            wall, report_s = run_sweep(report)
            walls[report].append(wall)
            if report_s is not None:
                shares.append(report_s / (wall - report_s))
            print(f"report={str(report).lower():5} wall {wall:6.2f} s" + (f", report {report_s:.1f} s" if report_s else ""),
                  flush=True)
    result = dict(
        date=dt.date.today().isoformat(), sweep=" ".join(SWEEP), repeats=args.repeats, load=os.getloadavg()[0],
        wall_s_report_false=walls[False], wall_s_report_true=walls[True],
        median_wall_s_report_false=statistics.median(walls[False]),
        median_wall_s_report_true=statistics.median(walls[True]),
        median_report_share=statistics.median(shares) if shares else None)
    result["median_wall_ratio"] = result["median_wall_s_report_true"] / result["median_wall_s_report_false"]
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("wall_s")}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"report-overhead-{result['date']}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return result


if __name__ == "__main__":
    main()
