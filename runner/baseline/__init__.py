"""Stored FLOPs baselines and the CI gate: `python -m runner.baseline check|update`.

    python -m runner.baseline check                  # recompute, compare with tests/baselines/flops.csv
    python -m runner.baseline update                 # rewrite the file (review the diff)
    python -m runner.baseline check  --results DIR --file pinned.csv   # a sweep's runs against a pinned file
    python -m runner.baseline update --results DIR --file pinned.csv   # pin a sweep

What the built-in baseline holds (docs/baselines.md):

* every `conf/model/*.yaml` with `weights: pretrained` (the full-size checkpoints), built on the meta device: analytic
  FLOPs per token per MoE layer, total MoE FLOPs per token and active parameters at the model's default top-k and at a
  few other k, plus the k-independent parts (router, one expert, shared experts per layer; total and expert parameters);
* every yaml with `weights: random` (the tiny models): the same analytic numbers, plus a real forward pass of the
  built-in text (BLOCKS blocks of SEQ_LEN tokens, seed SEED, CPU, float32, one thread): measured FLOPs per token per
  layer and in total, and the loss, at the default top-k, at OTHER_K, and under the SELECTOR dynamic selector.

The file is a tidy long CSV, one value per row, sorted; consecutive MoE layers with the same value share one row
(`layers=1-26`). Analytic numbers compare exactly. A `tolerance` (relative: |now - baseline| <= tolerance * |baseline|)
is set only on measured numbers whose exact value is not a property of the code alone:

* LOSS_RTOL on losses (float32 summation order differs across CPU kernels, ~1e-7 relative here);
* ROUTING_RTOL on what a dynamic selector decides per token (its FLOPs and mean k): a routing probability that sits on
  a decision boundary may flip on another platform. One flipped decision moves a tiny model's per-layer FLOPs by one
  expert in 256 tokens (~1.2e-3 relative); any change of the FLOP formula moves them by >= 1.3 % (the router, the
  smallest term). Top-k rows keep exactly k experts per token, so their measured FLOPs are exact.

Exit codes: 0 every entry matches, 1 differences (or a model that no longer builds), 2 usage errors or a missing or
corrupt baseline file (one line on stderr, no traceback).

The package: entries.py (what one stored number is), compute.py (the built-in entries: conf/model/*.yaml on the meta
device and the tiny models' forward passes), sweeps.py (entries from a sweep's runs), csvfile.py (the file format),
compare.py (differences and their table), cli.py (the command line).
"""
from .commands import EXIT_DIFF, EXIT_OK, EXIT_USAGE, builtin_entries_reporting, main
from .diffs import KINDS, Diff, compare, counts, matches, similar, table
from .compute import (BLOCKS, DATASET, OTHER_K, SELECTOR, SEED, SEQ_LEN, analytic_entries, builtin_entries, k_values,
                      measured_entries, model_configs, model_entries)
from .csvfile import COLUMNS, DEFAULT_FILE, ROOT, TEXT_METRICS, dumps, load, write
from .entries import (LOSS_RTOL, ROUTING_RTOL, SWEEP_LOSS_RTOL, BaselineError, Entry, Value, clean, grouped, make_key,
                      selector_label, span)
from .sweeps import SETTING_COLUMNS, job_key, read_runs, run_setting, sweep_entries

__all__ = [
    "BLOCKS", "COLUMNS", "DATASET", "DEFAULT_FILE", "EXIT_DIFF", "EXIT_OK", "EXIT_USAGE", "KINDS", "LOSS_RTOL",
    "OTHER_K", "ROOT", "ROUTING_RTOL", "SEED", "SELECTOR", "SEQ_LEN", "SETTING_COLUMNS", "SWEEP_LOSS_RTOL",
    "TEXT_METRICS", "BaselineError", "Diff", "Entry", "Value", "analytic_entries", "builtin_entries",
    "builtin_entries_reporting", "clean", "compare", "counts", "dumps", "grouped", "job_key", "k_values", "load", "main",
    "make_key", "matches", "measured_entries", "model_configs", "model_entries", "read_runs", "run_setting",
    "selector_label", "similar", "span", "sweep_entries", "table", "write",
]
