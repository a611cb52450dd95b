"""The command line: `python -m runner.baseline check|update [--file F] [--results DIR] [--loss-rtol X]`."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from ..errors import OutputError
from ..files import user_directory
from .diffs import compare, counts, table
from .csvfile import DEFAULT_FILE, ROOT, load, write
from .entries import SWEEP_LOSS_RTOL, BaselineError, Entry
from .sweeps import read_runs, sweep_entries

EXIT_OK, EXIT_DIFF, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner.baseline",
        description="Compare recomputed FLOPs (or a sweep's results) with a stored baseline file. "
                    "Exit codes: 0 match, 1 differences, 2 usage error or missing/corrupt baseline file.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{check,update}")
    for name, text in (("check", "recompute and compare with the baseline file"),
                       ("update", "recompute and rewrite the baseline file")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--file", type=Path, default=None,
                         help=f"baseline CSV (default: {DEFAULT_FILE.relative_to(ROOT)}; required with --results)")
        sub.add_argument("--results", type=Path, default=None,
                         help="a sweep directory (with summary.parquet) or a results directory (with table=runs/): "
                              "its runs instead of the built-in models")
        sub.add_argument("--loss-rtol", type=float, default=SWEEP_LOSS_RTOL,
                         help=f"relative tolerance written for sweep losses (default {SWEEP_LOSS_RTOL:g})")
    return parser


def builtin_entries_reporting() -> tuple[list[Entry], list[str]]:
    """The built-in entries, and one note per model that could not be built."""
    from . import compute  # looked up when called, so that a test may replace compute.builtin_entries

    failures: list[str] = []
    entries = compute.builtin_entries(report=lambda name, message: failures.append(f"model {name}: {message}"))
    return entries, failures


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.results is not None and args.file is None:
            raise BaselineError("--results needs --file: the baseline file that pins this sweep")
        if args.loss_rtol < 0 or not math.isfinite(args.loss_rtol):
            raise BaselineError(f"--loss-rtol must be a number >= 0, got {args.loss_rtol}")
        path = args.file or DEFAULT_FILE
        if args.command == "update":
            user_directory(path.parent, "--file")  # where the file goes, before anything is computed
        runs = read_runs(args.results) if args.results is not None else None
        if args.command == "check":
            baseline = load(path)  # a missing or corrupt file fails before anything is computed
        else:
            baseline = None  # None: no readable file before (a first update prints no table of extras)
            try:
                baseline = load(path) if path.exists() else None
            except BaselineError as exc:
                print(f"baseline: note: replacing an unreadable file: {exc}", file=sys.stderr)
        if runs is not None:
            now, failures = sweep_entries(runs, loss_rtol=args.loss_rtol), []
        else:
            now, failures = builtin_entries_reporting()
    except (BaselineError, OutputError) as exc:
        print(f"baseline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for note in failures:
        print(f"baseline: error: {note}", file=sys.stderr)
    # a sweep's pin keeps the tolerances it was written with (--loss-rtol); the built-in ones are the code's
    diffs = compare(baseline or [], now, tolerances=runs is None)
    elapsed = time.perf_counter() - start
    shown = _relative(path)
    if args.command == "update":
        if failures:
            print(f"baseline: error: {shown} not updated: {len(failures)} model(s) failed to build", file=sys.stderr)
            return EXIT_DIFF
        if diffs and baseline is not None:
            print(table(diffs))
        try:
            write(path, now)
        except OutputError as exc:  # a full disk: one line, no temp file left
            print(f"baseline: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        change = "new file" if baseline is None else (counts(diffs) or "no changes")
        print(f"baseline updated: {len(now)} entries written to {shown} ({change}; {elapsed:.1f} s)")
        return EXIT_OK
    if not diffs and not failures:
        print(f"baseline OK: {len(baseline)} entries match ({shown}, {elapsed:.1f} s)")
        return EXIT_OK
    if diffs:
        print(table(diffs))
    again = "python -m runner.baseline update" + (f" --results {args.results} --file {shown}" if args.results
                                                   else ("" if path == DEFAULT_FILE else f" --file {shown}"))
    print(f"baseline FAILED: {len(diffs)} difference(s) ({counts(diffs) or 'none'}) against {shown} "
          f"({len(baseline)} entries, {elapsed:.1f} s); if the change is intended: {again}")
    return EXIT_DIFF


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
