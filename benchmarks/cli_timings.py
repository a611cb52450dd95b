"""Wall times of the commands a newcomer runs first (docs/runner.md, BENCHMARKS.md "The default job on CPU"), with
the machine they were measured on: CPU model, cores, load average, torch and transformers versions.

    python benchmarks/cli_timings.py [--repeats 3] [--out benchmarks/results]

Each command runs `--repeats` times in a fresh process and a fresh output dir (RUNNER_OUT), commands interleaved;
writes cli-timings-<date>.json with every time and each command's min and max. The docs quote those ranges and
tests/unit/test_docs_claims.py checks that they match the newest JSON, so a re-measurement is one run and one edit.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> (argv after the interpreter, the exit status it must have)
COMMANDS = {
    "import torch + transformers": (["-c", "import torch, transformers"], 0),
    "python -m runner --help": (["-m", "runner", "--help"], 0),
    "python -m runner topK=3 (a config error)": (["-m", "runner", "topK=3"], 1),
    "python -m runner": (["-m", "runner"], 0),
    "python -m runner -m experiment=smoke": (["-m", "runner", "-m", "experiment=smoke"], 0),
    "python -m runner.baseline check": (["-m", "runner.baseline", "check"], 0),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(argv: list[str], status: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, env={**os.environ, "RUNNER_OUT": out},
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != status:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}, expected {status}:\n{done.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, (command, status) in COMMANDS.items():
            walls[name].append(timed(command, status))
            print(f"{name:45} {walls[name][-1]:6.2f} s", flush=True)
    result = dict(
        date=dt.date.today().isoformat(), cpu=cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
        torch=version("torch"), transformers=version("transformers"), repeats=args.repeats,
        load_before=load_before[0], load_after=os.getloadavg()[0],
        commands={name: dict(wall_s=times, min_s=min(times), max_s=max(times)) for name, times in walls.items()})
    print(json.dumps({k: v for k, v in result.items() if k != "commands"}))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cli-timings-{result['date']}.json"
    with tempfile.NamedTemporaryFile("w", dir=args.out, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(json.dumps(result, indent=1) + "\n")
    os.replace(tmp.name, path)
    return result


if __name__ == "__main__":
    main()
