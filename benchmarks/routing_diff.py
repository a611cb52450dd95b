"""How far routing moves with the way a model runs, and what an expert cache would hit: one traced reference job
(eager, float32, batch B, analysis.cache=true analysis.lookahead=true) and three variants of the same blocks (compile,
bfloat16, batch 1), each diffed against the reference with `compare --routing`.

    python benchmarks/routing_diff.py OUT [--json out.json] [-- <runner overrides, e.g. model=... device=cuda>]

Prints, per phase, the reference's LRU / LFU / OPT hit rates at C = E/4 and E/2 (mean over MoE layers), the decode
adjacent-token overlap and lookahead recall (mean over layers), and per variant the mean overlap, exact-set and
top-1 agreement over layers and the first diverging layer. Every job runs as `python -m runner` in a subprocess.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHAPE = ("seq_len=256", "decode_tokens=32", "trace=true")
VARIANTS = {"reference": ("batch_size=8", "max_batches=2", "analysis.cache=true", "analysis.lookahead=true"),
            "compiled": ("batch_size=8", "max_batches=2", "compile=true"),
            "bfloat16": ("batch_size=8", "max_batches=2", "device.dtype=bfloat16"),
            "batch1": ("batch_size=1", "max_batches=16")}


def run(out: Path, overrides: list[str]) -> dict:
    import numpy as np

    from runner import results
    from runner.baseline.routing_diff import diff_sources, first_divergence

    for name, settings in VARIANTS.items():
        done = subprocess.run([sys.executable, "-m", "runner", *SHAPE, *settings, *overrides,
                               f"out_root={out / name}"], cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name}: python -m runner failed:\n{done.stderr[-2000:]}")
    reference = out / "reference" / "results"
    cache = results.read_table(reference, "cache")
    found: dict = {"cache": {}, "variants": {}}
    for phase, rows in cache.groupby("phase"):
        experts = int(rows["num_experts"].iloc[0])
        found["cache"][phase] = {f"{policy}@C={c}": float(rows[(rows["policy"] == policy) & (rows["capacity"] == c)]
                                                          ["hit_rate"].mean())
                                 for policy in ("lru", "lfu", "opt") for c in (experts // 4, experts // 2)}
    locality = results.read_table(reference, "locality")
    layers = results.read_table(reference, "layers")
    found["decode_overlap"] = float(locality[locality["phase"] == "decode"]["overlap"].mean())
    found["decode_overlap_random"] = float(locality[locality["phase"] == "decode"]["overlap_random"].mean())
    found["lookahead_recall"] = {phase: float(np.nanmean(rows["lookahead_recall"].astype(float)))
                                 for phase, rows in layers.groupby("phase")}
    for name in VARIANTS:
        if name == "reference":
            continue
        _, blocks, _ = diff_sources(str(reference), str(out / name / "results"))
        (_, frame), = blocks
        found["variants"][name] = {
            phase: dict(tokens=int(rows["tokens"].sum()), overlap=float(rows["overlap"].mean()),
                        exact=float(rows["exact"].mean()), top1=float(rows["top1"].mean()))
            for phase, rows in frame.groupby("phase")}
        found["variants"][name]["first_diverging_layer"] = first_divergence(frame)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    found = run(args.out, overrides)
    print(json.dumps(found, indent=1))
    if args.json:
        args.json.write_text(json.dumps(dict(overrides=overrides, **found), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
