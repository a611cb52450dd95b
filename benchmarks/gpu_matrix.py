"""Every full-size model config on one GPU: random bf16 weights, one runner job each, measured == analytic FLOPs.

    python benchmarks/gpu_matrix.py                        # every conf/model/*.yaml without "_tiny", on cuda:0
    python benchmarks/gpu_matrix.py --models olmoe,mixtral --max-batches 2
    python benchmarks/gpu_matrix.py --dry-run              # the plan (layers kept, memory), no GPU needed

For each model the script builds the config on the meta device to count parameters, keeps as many decoder layers as
fit in ``--memory-fraction`` of the GPU (the leading dense layers, then MoE layers; at least one MoE layer) and says
so where it cut, then runs ``python -m runner model=<m> model.weights=random device=cuda measure_flops=true ...`` in
a subprocess (one process per model: a crash or an out-of-memory error is that model's row, not the end of the run)
and reads the job's row back from the results dataset.

Per model: status (ok / failed, with the error), layers kept of the config's, parameters, MoE FLOPs per token
analytic vs measured (FlopCounterMode on CUDA: grouped_mm experts, GQA flash/efficient attention) and their
difference, the routed count (analytic from the real per-token k), tokens/s, peak memory.

Writes ``<out>/gpu_matrix.json`` and ``<out>/gpu_matrix.parquet`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_DIR = ROOT / "conf" / "model"
LAYER_FIELDS = ("num_hidden_layers", "num_layers", "n_layers")
DENSE_FIELDS = ("first_k_dense_replace", "num_dense_layers")


def full_size_models() -> list[str]:
    """The hub checkpoints' yamls: not the tiny models, nor the small trained one shipped in the package (${trained:})."""
    return sorted(p.stem for p in MODEL_DIR.glob("*.yaml") if "_tiny" not in p.stem and "${trained:" not in p.read_text())


def model_conf(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(MODEL_DIR / f"{name}.yaml"), resolve=True)


def layer_field(config: dict[str, Any]) -> str | None:
    return next((f for f in LAYER_FIELDS if isinstance(config.get(f), int)), None)


def meta_params(model_type: str, config: dict[str, Any]) -> tuple[int, int]:
    """(parameters outside the decoder layers, parameters of all decoder layers), built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    layers = next((m for n, m in model.named_modules() if n.endswith("layers") and isinstance(m, torch.nn.ModuleList)),
                  None)
    in_layers = sum(p.numel() for p in layers.parameters()) if layers is not None else total
    return total - in_layers, in_layers


def plan(name: str, budget_bytes: int, bytes_per_param: int = 2) -> dict[str, Any]:
    """How many decoder layers of `name` fit in `budget_bytes` of weights (plus the run's activations' share)."""
    conf = model_conf(name)
    config = dict(conf.get("config") or {})
    field = layer_field(config)
    out: dict[str, Any] = dict(model=name, model_type=conf["model_type"], layer_field=field,
                               layers_config=config.get(field) if field else None)
    rest, in_layers = meta_params(conf["model_type"], config)
    layers = out["layers_config"] or 1
    per_layer = in_layers / layers  # MoE layers dominate; the dense ones are smaller, so this is conservative
    dense = max([int(config.get(f) or 0) for f in DENSE_FIELDS] + [0])
    fit = int((budget_bytes / bytes_per_param - rest) // per_layer) if per_layer else layers
    keep = min(layers, max(fit, dense + 1))
    out.update(params_config=rest + in_layers, params_kept=int(rest + per_layer * keep), layers_kept=keep,
               reduced=keep < layers, dense_layers=dense,
               weights_gb=(rest + per_layer * keep) * bytes_per_param / 2**30)
    if keep < layers:
        out["note"] = (f"{field} {layers} -> {keep}: {out['params_config'] / 1e9:.1f} B params do not fit "
                       f"{budget_bytes / 2**30:.0f} GiB in bf16")
    return out


def run_model(entry: dict[str, Any], args: argparse.Namespace, out_root: Path) -> dict[str, Any]:
    """One runner job in a subprocess; its row read back from the results dataset."""
    from runner import results

    name = entry["model"]
    overrides = [f"model={name}", "model.weights=random", "device=cuda", "measure_flops=true", "quality=never",
                 f"seq_len={args.seq_len}", f"batch_size={args.batch_size}", f"max_batches={args.max_batches}",
                 f"out_root={out_root}", "tag=gpu_matrix", "progress=false", "on_error=raise"]
    if entry["reduced"]:
        overrides.append(f"model.config.{entry['layer_field']}={entry['layers_kept']}")
    if args.experts_implementation:
        overrides.append(f"model.experts_implementation={args.experts_implementation}")
    if args.decode_tokens:
        overrides.append(f"decode_tokens={args.decode_tokens}")
    if args.compile:
        overrides.append("compile=true")
    command = [sys.executable, "-m", "runner", *overrides]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", str(args.gpu)))
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    row: dict[str, Any] = dict(entry, command=" ".join(command[1:]), returncode=proc.returncode,
                               wall_s=time.perf_counter() - start)
    runs = results.read_table(out_root / "results", "runs")
    runs = runs[(runs["model"] == name) & (runs["tag"] == "gpu_matrix")].sort_values("timestamp")
    if proc.returncode != 0 or runs.empty:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        row.update(status="failed", error=" | ".join(tail)[-600:] or f"exit code {proc.returncode}")
        return row
    job = runs.iloc[-1]
    analytic, measured = job.get("flops_per_token_analytic"), job.get("flops_per_token_measured")
    routed = job.get("flops_per_token_routed")
    row.update(
        status=job["status"], error=job.get("error"), device_name=job.get("device_name"),
        experts_implementation=job.get("experts_implementation"), topk=job.get("topk"),
        moe_layers=job.get("moe_layers"), params_total=job.get("params_total"), tokens=job.get("tokens"),
        flops_exact=job.get("flops_exact"), flops_per_token_analytic=analytic, flops_per_token_measured=measured,
        flops_per_token_routed=routed, tokens_per_s=job.get("tokens_per_s"), ttft_ms=job.get("ttft_ms"),
        tpot_ms=job.get("tpot_ms"),
        peak_allocated_gb=(job.get("peak_allocated_bytes") or 0) / 2**30,
    )
    if _number(analytic) and _number(measured):
        row["measured_minus_analytic"] = measured - analytic
        row["measured_equals_analytic"] = bool(measured == analytic)
    if _number(routed) and _number(measured):
        row["measured_equals_routed"] = bool(measured == routed)
    return row


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ("| model | status | layers kept | MoE FLOPs/token analytic | measured | equal | tokens/s | TTFT ms | TPOT ms "
              "| peak GiB | note |\n|---|---|---|---:|---:|---|---:|---:|---:|---:|---|")
    lines = [header]
    for r in rows:
        def num(key: str, fmt: str = ",.0f") -> str:
            return format(r[key], fmt) if _number(r.get(key)) else "—"

        equal = {True: "yes", False: "**NO**"}.get(r.get("measured_equals_analytic"), "—")
        if equal == "yes" and r.get("flops_exact") is False:
            equal = "yes (not exact by design)"
        note = r.get("note") or ""
        if r.get("status") != "ok":
            note = (note + "; " if note else "") + str(r.get("error") or "")[:160]
        kept = f"{r.get('layers_kept')} of {r.get('layers_config')}" if r.get("reduced") else f"{r.get('layers_kept')}"
        lines.append(f"| {r['model']} | {r.get('status')} | {kept} | {num('flops_per_token_analytic')} | "
                     f"{num('flops_per_token_measured')} | {equal} | {num('tokens_per_s')} | {num('ttft_ms', '.1f')} | "
                     f"{num('tpot_ms', '.2f')} | "
                     f"{num('peak_allocated_gb', '.1f')} | {note.replace('|', '/')} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated subset (default: every conf/model/*.yaml without _tiny)")
    p.add_argument("--gpu", type=int, default=0, help="GPU index when CUDA_VISIBLE_DEVICES is not set (default 0)")
    p.add_argument("--memory-gb", type=float, help="GPU memory to plan for (default: the device's total)")
    p.add_argument("--memory-fraction", type=float, default=0.75,
                   help="share of it for the weights; the rest is activations and the allocator (default 0.75)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-batches", type=int, default=3, help="batches per job; FLOPs are measured on every one")
    p.add_argument("--experts-implementation", help="model.experts_implementation for every job (default: transformers')")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per model job")
    p.add_argument("--decode-tokens", type=int, default=0,
                   help="decode_tokens per job: greedy static-cache generate (CUDA graphs) after each batch; TTFT/TPOT")
    p.add_argument("--compile", action="store_true", help="compile=true: torch.compile the profiled model")
    p.add_argument("--out", default="outputs/benchmarks/gpu_matrix")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    args = p.parse_args(argv)
    known = full_size_models()
    args.model_list = [m.strip() for m in args.models.split(",")] if args.models else known
    unknown = [m for m in args.model_list if m not in known]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; full-size configs: {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import pandas as pd

    args = parse_args(argv)
    if args.memory_gb is None:
        import torch

        if torch.cuda.is_available():
            args.memory_gb = torch.cuda.get_device_properties(args.gpu).total_memory / 2**30
        elif args.dry_run:
            args.memory_gb = 80.0
        else:
            raise SystemExit("CUDA is not available: gpu_matrix needs a GPU (or --dry-run)")
    budget = int(args.memory_gb * args.memory_fraction * 2**30)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.model_list:
        entry = plan(name, budget)
        print(f"{name}: {entry['params_config'] / 1e9:.2f} B params; "
              + (entry["note"] if entry["reduced"] else f"all {entry['layers_kept']} layers fit"
                 f" ({entry['weights_gb']:.1f} GiB)"), flush=True)
        if args.dry_run:
            rows.append(entry)
            continue
        try:
            row = run_model(entry, args, out / "runner")
        except subprocess.TimeoutExpired:
            row = dict(entry, status="failed", error=f"timed out after {args.timeout} s")
        print(f"  -> {row['status']}: measured {row.get('flops_per_token_measured')} vs analytic "
              f"{row.get('flops_per_token_analytic')} FLOPs/token, {row.get('tokens_per_s')} tokens/s"
              + (f" ({row.get('error')})" if row["status"] != "ok" else ""), flush=True)
        rows.append(row)
    meta = dict(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), memory_gb=args.memory_gb,
                memory_fraction=args.memory_fraction, seq_len=args.seq_len, batch_size=args.batch_size,
                max_batches=args.max_batches, decode_tokens=args.decode_tokens, compile=args.compile)
    (out / "gpu_matrix.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2, default=str))
    pd.DataFrame(rows).astype({"note": "string"}, errors="ignore").to_parquet(out / "gpu_matrix.parquet", index=False)
    print()
    print(markdown(rows))
    print(f"\nwrote {out / 'gpu_matrix.json'} and {out / 'gpu_matrix.parquet'}")
    return rows


if __name__ == "__main__":
    main()
