"""`python -m runner.report [SOURCE] [--results-dir DIR] [--out DIR] [--layer N]`: write report.html and its PNGs.

Exit codes: 0 written, 2 bad input (one line on stderr: an unknown sweep, a directory without results)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from ..errors import OutputError, ResultsNotFound


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Write an HTML report with plots of a sweep (report.html and PNGs beside it).")
    parser.add_argument("source", nargs="?", default="latest",
                        help="a sweep directory, a results directory (every job in it), a sweep id or run id, or "
                             "latest (default)")
    parser.add_argument("--results-dir", default=None,
                        help="where to look up a sweep id or `latest` (default: $RUNNER_OUT/results or "
                             "outputs/results)")
    parser.add_argument("--out", default=None, help="output directory (default: <sweep dir>/report for a sweep directory, "
                             "<results dir>/report for a results directory, <results dir>/reports/<id> for an id or "
                             "latest)")
    parser.add_argument("--layer", type=int, default=None,
                        help="the layer of the co-activation figure (default: the middle MoE layer)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from ..results.select import select
    from .build import write_report

    try:
        selection = select(args.source, args.results_dir)
        path = write_report(selection, args.out, args.layer)
    except (ResultsNotFound, OutputError, ValueError, OSError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path} ({len(selection.runs)} job(s), {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
