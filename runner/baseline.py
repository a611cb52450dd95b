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
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT / "tests" / "baselines" / "flops.csv"
COLUMNS = ("key", "model", "k", "selector", "dataset", "metric", "layers", "value", "tolerance")

SEED = 0
BLOCKS = 4  # fixed-length blocks of the built-in text, run as one batch
SEQ_LEN = 64
DATASET = f"builtin:{BLOCKS}x{SEQ_LEN}"
OTHER_K = 4  # the tiny models' second top-k (twice their default of 2)
SELECTOR = ("kneedle", {"k_max": 4})
LOSS_RTOL = 1e-5
ROUTING_RTOL = 2e-3
SWEEP_LOSS_RTOL = 1e-3  # sweeps may run in bf16 on a GPU: ~1e-3 relative between kernels; --loss-rtol to change

EXIT_OK, EXIT_DIFF, EXIT_USAGE = 0, 1, 2


class BaselineError(Exception):
    """A usage problem or a missing / corrupt baseline file: reported as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------------------------------
# Entries
Value = int | float | str


@dataclass(frozen=True)
class Entry:
    model: str
    metric: str
    value: Value
    k: int | None = None
    selector: str = ""
    dataset: str = ""
    layers: str = ""
    tolerance: float | None = None  # relative; None = exact

    @property
    def key(self) -> str:
        return make_key(self.model, self.k, self.selector, self.dataset, self.metric, self.layers)

    @property
    def identity(self) -> tuple:
        return (self.model, self.k, self.selector, self.dataset, self.layers)

    def sort_key(self) -> tuple:
        first = self.layers.split("-", 1)[0] if self.layers else ""
        return (self.model, self.k is not None, self.k or 0, self.selector, self.dataset, self.metric,
                int(first) if first.lstrip("-").isdigit() else -1, self.layers)


def make_key(model: str, k: int | None, selector: str, dataset: str, metric: str, layers: str) -> str:
    parts = [model, f"k={k}" if k is not None else "", selector, dataset, metric + (f"[{layers}]" if layers else "")]
    return "|".join(p for p in parts if p)


def clean(value: Any) -> Value | None:
    """Numbers as int when integral (written without '.0'), float otherwise; None for missing / NaN."""
    if value is None:
        return None
    if not isinstance(value, (str, list, tuple)):
        import pandas as pd

        if pd.isna(value):  # None, NaN, pandas' NA of a nullable integer column
            return None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalar
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


def span(ids: Sequence[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"


def grouped(model: str, metric: str, per_layer: Iterable[tuple[int, Any]], **fields: Any) -> list[Entry]:
    """One entry per run of consecutive layer ids that share a value."""
    runs: list[tuple[list[int], Value]] = []
    for layer, raw in per_layer:
        value = clean(raw)
        if value is None:
            continue
        layer = int(layer)
        if runs and runs[-1][1] == value and runs[-1][0][-1] + 1 == layer:
            runs[-1][0].append(layer)
        else:
            runs.append(([layer], value))
    return [Entry(model=model, metric=metric, value=value, layers=span(ids), **fields) for ids, value in runs]


def selector_label(name: str, params: dict[str, Any]) -> str:
    given = {k: v for k, v in sorted(params.items()) if v is not None}
    return name + (f"({','.join(f'{k}={clean(v)}' for k, v in given.items())})" if given else "")


# ---------------------------------------------------------------------------------------------------------------------
# The built-in baseline: conf/model/*.yaml
def model_configs() -> list:
    from omegaconf import OmegaConf

    from .schema import CONFIG_DIR, ModelConfig

    configs = []
    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        configs.append(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))))
    return configs


def k_values(default_k: int, num_experts: int) -> list[int]:
    """The default top-k and a few others: 1, half, default, double (within 1..num_experts)."""
    return sorted({k for k in (1, max(default_k // 2, 1), default_k, 2 * default_k) if 1 <= k <= num_experts})


def analytic_entries(name: str, profiler, ks: Sequence[int]) -> list[Entry]:
    layers = profiler.layers
    params = profiler.param_counts(ks[0])
    out = [
        Entry(name, "moe_layers", len(layers)),
        Entry(name, "default_top_k", clean(layers[0].dims["top_k"].value)),
        Entry(name, "params_total", clean(params["params_total"])),
        Entry(name, "params_experts", clean(params["params_experts"])),
    ]
    out += grouped(name, "flops_router", ((l.layer_id, l.cost.router) for l in layers))
    out += grouped(name, "flops_per_expert", ((l.layer_id, l.cost.per_expert) for l in layers))
    out += grouped(name, "flops_shared", ((l.layer_id, l.cost.shared) for l in layers))
    for k in ks:
        frame = profiler.flops_per_token(k)
        out += grouped(name, "flops_per_token", zip(frame["layer"], frame["flops"]), k=k)
        out.append(Entry(name, "moe_flops_per_token", clean(frame["flops"].sum()), k=k))
        out.append(Entry(name, "params_active", clean(profiler.param_counts(k)["params_active"]), k=k))
    return out


def measured_entries(name: str, loaded, profiler, ids, k: int, selector: str) -> list[Entry]:
    """One forward pass of `ids` with FLOP counting: measured FLOPs per token (per layer, total) and the loss."""
    import torch

    from .profiler.evaluate import batch_sums

    profiler.reset()
    with torch.no_grad(), profiler.measure_flops():
        logits = loaded.model(input_ids=ids, use_cache=False).logits
    sums = batch_sums(logits, ids, None, None)
    frame = profiler.layers_df()
    tokens = int(ids.numel())
    routing = ROUTING_RTOL if not selector.startswith("topk") else None
    fields = dict(k=k, selector=selector, dataset=DATASET)
    per_layer = [(layer, measured / tokens) for layer, measured in zip(frame["layer"], frame["flops_measured"])]
    out = grouped(name, "flops_measured_per_token", per_layer, tolerance=routing, **fields)
    out.append(Entry(name, "moe_flops_per_token_measured", clean(sum(v for _, v in per_layer)), tolerance=routing,
                     **fields))
    out.append(Entry(name, "loss", clean(sums["nll"] / sums["targets"]), tolerance=LOSS_RTOL, **fields))
    if routing is not None:
        out.append(Entry(name, "k_mean", clean(frame["k_mean"].mean()), tolerance=routing, **fields))
    return out


def model_entries(model_cfg, documents=None) -> list[Entry]:
    import torch

    from . import data, models
    from .profiler import MOEProfiler
    from .schema import DeviceConfig, Weights

    random = model_cfg.weights is Weights.random
    if not random:
        model_cfg = replace(model_cfg, weights=Weights.meta)
    models.clear_cache()  # a fresh build: never a model another caller may have changed
    loaded = models.load(model_cfg, DeviceConfig(name="cpu", device="cpu", dtype="float32"), SEED)
    try:
        profiler = MOEProfiler(loaded.model, verbose=False)
        try:
            default_k = model_cfg.default_topk or profiler.top_k or profiler.layers[0].dims["top_k"].value
            out = analytic_entries(model_cfg.name, profiler, k_values(default_k, profiler.layers[0].num_experts))
        finally:
            profiler.detach()
        if not random:
            return out
        blocks = data.tokenize(documents, loaded.tokenizer, SEQ_LEN, "the built-in text")
        if blocks.num_blocks < BLOCKS:
            raise RuntimeError(f"the built-in text gives {blocks.num_blocks} blocks of {SEQ_LEN}, fewer than {BLOCKS}")
        ids = blocks.ids[:BLOCKS]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for k in sorted({default_k, OTHER_K}):
                profiler = MOEProfiler(loaded.model, verbose=False)
                try:
                    if k != default_k:
                        profiler.set_top_k(k)
                    out += measured_entries(model_cfg.name, loaded, profiler, ids, k, "topk")
                finally:
                    profiler.detach()
            name, params = SELECTOR
            profiler = MOEProfiler(loaded.model, verbose=False, selector=name, selector_params=params)
            try:
                out += measured_entries(model_cfg.name, loaded, profiler, ids, int(params["k_max"]),
                                        selector_label(name, params))
            finally:
                profiler.detach()
        finally:
            torch.set_num_threads(threads)
        return out
    finally:
        models.clear_cache()


def builtin_entries(report=None) -> list[Entry]:
    """Recompute every entry of the built-in baseline. A model that fails to build is reported through
    `report(name, message)` and contributes no entries (they show as missing)."""
    import warnings

    from . import data
    from .errors import describe, known_errors
    from .schema import DatasetConfig

    documents = data.load_documents(DatasetConfig())
    entries: list[Entry] = []
    for model_cfg in model_configs():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entries += model_entries(model_cfg, documents)
        except known_errors() as exc:
            if report is None:
                raise
            report(model_cfg.name, describe(exc))
    return entries


# ---------------------------------------------------------------------------------------------------------------------
# Sweeps: rows of a `runs` table
def read_runs(path: Path):
    """A sweep dir (summary.parquet) or a results dir (table=runs): one row per job, latest first-class result."""
    import pandas as pd

    from .results import read_table

    if not path.exists():
        raise BaselineError(f"--results {path}: no such directory")
    if path.name.startswith("table=runs") and path.is_dir():
        path = path.parent
    if (path / "summary.parquet").is_file():
        try:
            runs = pd.read_parquet(path / "summary.parquet")
        except Exception as exc:  # pyarrow: ArrowInvalid, OSError
            raise BaselineError(f"{path / 'summary.parquet'}: not a readable parquet file "
                                f"({' '.join(str(exc).split())[:200]})") from None
    elif (path / "table=runs").is_dir():
        try:
            runs = read_table(path, "runs")
        except Exception as exc:
            raise BaselineError(f"{path / 'table=runs'}: cannot read the runs table ({' '.join(str(exc).split())[:200]})") from None
        runs = _resolve_skipped(runs)
    else:
        raise BaselineError(f"--results {path}: neither a sweep directory (summary.parquet) nor a results directory "
                            "(table=runs/)")
    if "status" not in runs.columns or "model" not in runs.columns:
        raise BaselineError(f"--results {path}: not a runs table (no status / model columns)")
    return runs


def _resolve_skipped(runs):
    """A resumed (`skipped`) job reports the metrics of the run it reused, as the sweep summary does."""
    import pandas as pd

    if not len(runs) or not (runs["status"] == "skipped").any():
        return runs
    by_id = runs.set_index("run_id")
    rows = []
    for _, row in runs.iterrows():
        prior = row.get("resumed_from")
        if row["status"] == "skipped" and isinstance(prior, str) and prior in by_id.index:
            old = by_id.loc[prior]
            old = old.iloc[-1] if isinstance(old, pd.DataFrame) else old
            filled = old.copy()
            filled["run_id"] = row["run_id"]
            for key in ("status", "resumed_from", "timestamp", "sweep_id", "job_num"):
                filled[key] = row[key]
            rows.append(filled)
        else:
            rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def _json_dict(raw: Any) -> dict[str, Any]:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return {}
    try:
        params = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        return {}
    return params if isinstance(params, dict) else {}


# runs columns that change a job's numbers besides model, k and selector: part of a sweep entry's key
SETTING_COLUMNS = ("seq_len", "batch_size", "max_batches", "dtype", "device", "weights", "seed")


def run_setting(row) -> str:
    """The key's dataset part for a sweep job: the data source (path, config, split, slice, files) and every setting
    that changes the numbers, e.g. `builtin[:8] seq_len=64 batch_size=8 max_batches=1 dtype=float32 device=cpu
    weights=random seed=0`; dimension overrides and fallbacks when given."""
    parts = [str(row.get("dataset_source") or row.get("dataset") or "")]
    parts += [f"{column}={clean(row.get(column))}" for column in SETTING_COLUMNS if clean(row.get(column)) is not None]
    for which in ("override", "fallback"):
        dims = _json_dict(row.get(f"dims_{which}"))
        parts += [f"{which}.{dim}={value}" for dim, value in sorted(dims.items())]
    return " ".join(parts)


def sweep_entries(runs, loss_rtol: float = SWEEP_LOSS_RTOL) -> list[Entry]:
    """Key model/topk/selector(+params)/data and settings (run_setting); metrics: analytic and measured MoE
    FLOPs/token, loss, status. When a key occurs more than once (a shared results dir), the latest row counts."""
    if "timestamp" in runs.columns:
        runs = runs.sort_values("timestamp", kind="stable")
    latest: dict[tuple, Any] = {}
    for _, row in runs.iterrows():
        topk = clean(row.get("topk"))
        selector = str(row.get("selector") or "topk")
        params = _json_dict(row.get("selector_params"))
        if selector != "topk" and params.get("k_max") is None and topk is not None:
            params["k_max"] = topk  # a job that failed before its selector resolved k_max
        label = selector_label(selector, params) if selector != "topk" else "topk"
        latest[(str(row["model"]), topk, label, run_setting(row))] = row
    out: list[Entry] = []
    for (model, topk, label, dataset), row in latest.items():
        fields = dict(k=topk, selector=label, dataset=dataset)
        status = str(row.get("status"))
        out.append(Entry(model, "status", "ok" if status == "skipped" else status, **fields))
        for column, metric, tolerance in (
            ("flops_per_token_analytic", "moe_flops_per_token", None),
            ("flops_per_token_measured", "moe_flops_per_token_measured", None if label == "topk" else ROUTING_RTOL),
            ("loss", "loss", loss_rtol),
        ):
            value = clean(row.get(column))
            if value is not None:
                out.append(Entry(model, metric, value, tolerance=tolerance, **fields))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The file
def _text(value: Value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def dumps(entries: Iterable[Entry]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in sorted(entries, key=Entry.sort_key):
        writer.writerow([e.key, e.model, "" if e.k is None else e.k, e.selector, e.dataset, e.metric, e.layers,
                         _text(e.value), "" if e.tolerance is None else repr(float(e.tolerance))])
    return buffer.getvalue()


def write(path: Path, entries: Sequence[Entry]) -> None:
    keys = [e.key for e in entries]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise RuntimeError(f"duplicate baseline keys: {', '.join(duplicates[:5])}")  # a bug in the entry builders
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(entries), encoding="utf-8", newline="")
    os.replace(tmp, path)


_INT = re.compile(r"^-?\d+$")
TEXT_METRICS = ("status",)  # the only metrics whose value is a word (ok, failed); all others are numbers


def _parse_value(text: str) -> Value:
    if _INT.match(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def load(path: Path) -> list[Entry]:
    """Read and validate a baseline file; BaselineError (one line naming the file and line) when it is not one."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BaselineError(f"{path}: baseline file not found (create it with `python -m runner.baseline update"
                            f"{'' if path == DEFAULT_FILE else f' --file {path}'}`)") from None
    except IsADirectoryError:
        raise BaselineError(f"{path}: is a directory, not a baseline file") from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{path}: corrupt baseline file: not UTF-8 text (byte {exc.start})") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise BaselineError(f"{path}: corrupt baseline file: {exc}") from None
    if not rows or tuple(rows[0]) != COLUMNS:
        raise BaselineError(f"{path}: corrupt baseline file: the header must be {','.join(COLUMNS)}")
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], 2):
        where = f"{path}:{number}"
        if not row:
            continue
        if len(row) != len(COLUMNS):
            raise BaselineError(f"{where}: corrupt baseline file: {len(row)} fields, expected {len(COLUMNS)}")
        key, model, k, selector, dataset, metric, layers, value, tolerance = row
        if not model or not metric or value == "":
            raise BaselineError(f"{where}: corrupt baseline file: model, metric and value must not be empty")
        if k and not _INT.match(k):
            raise BaselineError(f"{where}: corrupt baseline file: k {k!r} is not an integer")
        if layers and not re.match(r"^\d+(-\d+)?$", layers):
            raise BaselineError(f"{where}: corrupt baseline file: layers {layers!r} is not N or N-M")
        tol = None
        if tolerance:
            try:
                tol = float(tolerance)
            except ValueError:
                tol = -1.0
            if not (math.isfinite(tol) and tol >= 0):
                raise BaselineError(f"{where}: corrupt baseline file: tolerance {tolerance!r} is not a number >= 0")
        parsed = _parse_value(value)
        if isinstance(parsed, str) and metric not in TEXT_METRICS and parsed not in ("true", "false"):
            raise BaselineError(f"{where}: corrupt baseline file: value {value!r} of metric {metric!r} is not a number")
        entry = Entry(model=model, metric=metric, value=parsed, k=int(k) if k else None,
                      selector=selector, dataset=dataset, layers=layers, tolerance=tol)
        if entry.key != key:
            raise BaselineError(f"{where}: corrupt baseline file: key {key!r} does not match its fields "
                                f"(expected {entry.key!r})")
        if key in seen:
            raise BaselineError(f"{where}: corrupt baseline file: duplicate key {key!r} (first on line {seen[key]})")
        seen[key] = number
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------------------------------
# Comparison
@dataclass(frozen=True)
class Diff:
    kind: str  # changed | renamed | missing | extra | tolerance
    key: str  # the baseline's key (the new one for `extra`)
    baseline: Value | None
    now: Value | None
    new_key: str | None = None  # renamed: the key it has now

    @property
    def label(self) -> str:
        if self.kind == "renamed":
            return f"renamed: {self.key} -> {self.new_key}"
        return f"{self.kind}: {self.key}"


KINDS = ("changed", "renamed", "missing", "extra", "tolerance")


def matches(base: Entry, now: Entry) -> bool:
    a, b = base.value, now.value
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if base.tolerance is None:
        return a == b
    return abs(b - a) <= base.tolerance * abs(a)


def compare(baseline: Sequence[Entry], now: Sequence[Entry], tolerances: bool = True) -> list[Diff]:
    """Differences, compared with the baseline's tolerances; `tolerances`: also report a tolerance that differs."""
    old = {e.key: e for e in baseline}
    new = {e.key: e for e in now}
    diffs: list[Diff] = []
    for key in old.keys() & new.keys():
        b, n = old[key], new[key]
        if not matches(b, n):
            diffs.append(Diff("changed", key, b.value, n.value))
        elif tolerances and b.tolerance != n.tolerance:
            diffs.append(Diff("tolerance", key, _tol(b.tolerance), _tol(n.tolerance)))
    missing = sorted((old[k] for k in old.keys() - new.keys()), key=Entry.sort_key)
    extra = sorted((new[k] for k in new.keys() - old.keys()), key=Entry.sort_key)
    used: set[str] = set()
    for b in missing:
        partner = next((n for n in extra if n.key not in used and similar(b, n) and matches(b, n)), None)
        if partner is None:
            diffs.append(Diff("missing", b.key, b.value, None))
        else:
            used.add(partner.key)
            diffs.append(Diff("renamed", b.key, b.value, partner.value, partner.key))
    diffs += [Diff("extra", n.key, None, n.value) for n in extra if n.key not in used]
    order = {e.key: e.sort_key() for e in [*baseline, *now]}
    return sorted(diffs, key=lambda d: (KINDS.index(d.kind), order[d.key]))


def similar(a: Entry, b: Entry) -> bool:
    """The same metric, and exactly one of model, k, selector, dataset, layer range differs."""
    return a.metric == b.metric and sum(x != y for x, y in zip(a.identity, b.identity)) == 1


def _tol(value: float | None) -> str:
    return "exact" if value is None else f"rtol {value!r}"


def _show(value: Value | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return repr(value)
    return value


def _delta(diff: Diff) -> str:
    a, b = diff.baseline, diff.now
    if diff.kind == "tolerance" or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return ""
    if a == 0:
        return "0%" if b == 0 else "inf"
    return f"{(b - a) / abs(a) * 100:+.3g}%"


def table(diffs: Sequence[Diff]) -> str:
    rows = [("entry", "baseline", "now", "delta %")] + [(d.label, _show(d.baseline), _show(d.now), _delta(d))
                                                        for d in diffs]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}".rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def counts(diffs: Sequence[Diff]) -> str:
    return ", ".join(f"{sum(d.kind == kind for d in diffs)} {kind}" for kind in KINDS
                     if any(d.kind == kind for d in diffs))


# ---------------------------------------------------------------------------------------------------------------------
# Command line
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
    failures: list[str] = []
    entries = builtin_entries(report=lambda name, message: failures.append(f"model {name}: {message}"))
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
    except BaselineError as exc:
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
        write(path, now)
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


if __name__ == "__main__":
    sys.exit(main())
