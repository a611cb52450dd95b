"""Profiler overhead on the full OLMoE-1B-7B architecture (random bf16 weights, one GPU).

    python benchmarks/overhead.py                 # GPU, full size (hidden 2048, 16 layers, 64 experts, top-8)
    python benchmarks/overhead.py --smoke         # CPU, tiny OLMoE (hidden 64, 2 layers, 8 experts, top-2)

One model is built once and reused by every variant:

  bare        no profiler, experts_implementation="grouped_mm" (the runner's default) — the reference
  routing     MOEProfiler(model, verbose=False): routing metrics recorded
  latency     MOEProfiler(model, latency=True, verbose=False): routing metrics + per-MoE-block timing
  kneedle     MOEProfiler(model, selector="kneedle", selector_params={"k_max": 8}, verbose=False)
  bare_eager  no profiler, experts_implementation="eager" (justifies grouped_mm as the default)

Phases: prefill (one forward of batch x len tokens; a timed sample is ``--prefill-iters`` forwards so the
recorder's periodic bulk reduction is included at its steady-state rate) and decode (batch 1: a prompt, untimed,
then ``--decode-tokens`` forward calls of one token each on the KV cache, timed together, reported per token).

Rounds interleave the variants (A B C D E, then E D C B A, ...) so slow drift (clocks, heat) cancels; the first
``--warmup`` rounds are dropped, and every variant also gets one untimed call of each phase after attaching (the
recorder allocates its buffers on the first call). Each timed region is bracketed by a device synchronisation,
never synchronised inside. Reported: the median of each (variant, phase) and its ratio to bare's median.

Also measured: host-device syncs in a profiled forward (torch.cuda.set_sync_debug_mode "error" -> pass/fail, for the
whole forward and for the MoE blocks alone, and
'warn' -> count of syncing calls, next to bare's count), and the profiler's memory after 1k vs 100k tokens seen
(recorder.buffer_bytes and the torch.cuda.memory_allocated delta; through recorder.record with random routing,
and on CUDA through the model as well).

Compiled variants (``--compiled``, default: on for CUDA, off for CPU / ``--smoke``, where inductor is slow): bare,
routing and kneedle, each on its own module tree over the same weights (so hooks and compiled code never mix), in
two more phases:

  compiled_prefill  torch.compile(model) (default mode), the prefill forward above; compiled untimed first
  static_decode     model.generate(prompt, cache_implementation="static", do_sample=False): transformers compiles
                    the decode step (mode "reduce-overhead": CUDA graphs). ms/token = (t(N new tokens) -
                    t(M new tokens)) / (N - M), both with the same static cache size (a stopping criterion ends the
                    short run), so the prompt and compile warm-up (done untimed first) cancel out

Both interleave their rounds like the eager ones, report ratios to the compiled bare of the same run, and check
that the profiler counted exactly the tokens that ran (``counts_exact``).

Writes ``<out>/overhead.json`` (everything) and ``<out>/overhead.parquet`` (one row per variant x phase),
each atomically, and prints a table of ratios to bare.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import OLMOE_1B_7B, TINY_OLMOE, atomic_write, build_model, jsonable  # noqa: E402
from benchmarks.overhead_checks import memory_check, sync_check  # noqa: E402
from benchmarks.overhead_compiled import run_compiled  # noqa: E402
from benchmarks.overhead_variants import (ANALYSES, COMPILED_PHASES, COMPILED_VARIANTS, KNEEDLE_PARAMS,  # noqa: E402
                                          PHASES, PROFILER_OPTIONS, TARGETS, VARIANTS, Workload, run_timing,
                                          summarise)

# -- configuration ------------------------------------------------------------------------------------------------

PRESETS = {
    "full": dict(device="cuda", reps=20, warmup=2, prefill_batch=8, prefill_len=512, prefill_iters=2,
                 decode_tokens=64, decode_prompt=128, memory_chunk=1000, threads=0),
    "smoke": dict(device="cpu", reps=2, warmup=1, prefill_batch=2, prefill_len=32, prefill_iters=1,
                  decode_tokens=4, decode_prompt=8, memory_chunk=1000, threads=1),
}


# -- main ---------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny OLMoE on CPU, few reps (the test runs this)")
    p.add_argument("--device", help="cuda / cuda:N / cpu (default: cuda, or cpu with --smoke)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="weights and activations (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--reps", type=int, help="timed rounds (default 20; smoke 2)")
    p.add_argument("--warmup", type=int, help="untimed rounds dropped first (default 2; smoke 1)")
    p.add_argument("--prefill-batch", type=int, help="default 8; smoke 2")
    p.add_argument("--prefill-len", type=int, help="default 512; smoke 32")
    p.add_argument("--prefill-iters", type=int, help="forwards per timed prefill sample (default 2; smoke 1)")
    p.add_argument("--decode-tokens", type=int, help="new tokens per timed decode sample (default 64; smoke 4)")
    p.add_argument("--decode-prompt", type=int, help="prompt length before decoding, untimed (default 128; smoke 8)")
    p.add_argument("--memory-chunk", type=int, help="tokens per call in the memory check (default 1000)")
    p.add_argument("--memory-via-model", choices=["auto", "on", "off"], default="auto",
                   help="also run the memory check through the model (auto: on CUDA only)")
    p.add_argument("--threads", type=int, help="torch CPU threads, restored on return; 0 keeps torch's default "
                   "(default 0; smoke 1: a tiny model gains nothing from more, and busy-waiting OpenMP threads on "
                   "shared cores can slow it 100x)")
    p.add_argument("--no-sync-check", action="store_true", help="skip the set_sync_debug_mode check")
    p.add_argument("--compiled", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile prefill and static-cache generate variants (auto: on CUDA only)")
    p.add_argument("--static-short", type=int, default=8,
                   help="new tokens of the short static-cache generate that is subtracted (default 8)")
    p.add_argument("--layers", type=int, help="num_hidden_layers override (a quicker full-width run)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (bare is always included)")
    p.add_argument("--out", default="outputs/benchmarks", help="directory for overhead.json / overhead.parquet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--analyses", choices=list(ANALYSES), default="basic",
                   help="routing analyses of the profiler variants, as the runner's analysis= presets: basic (the "
                        "runner's default: capacity drops), none, full (+ co-activation, transitions, vocabulary), "
                        "vocab (the vocabulary table alone)")
    args = p.parse_args(argv)
    for key, value in PRESETS["smoke" if args.smoke else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    args.variant_list = ["bare"] + [v for v in VARIANTS if v in variants and v != "bare"]
    if args.reps < 1 or args.warmup < 0 or args.decode_tokens < 1 or args.prefill_iters < 1:
        p.error("--reps, --decode-tokens and --prefill-iters must be >= 1 and --warmup >= 0")
    return args


def format_table(df: pd.DataFrame) -> str:
    lines = [f"{'variant':<11} {'phase':<16} {'median':>12} {'ratio':>7} {'target':>7}  note"]
    for row in df.itertuples():
        note = []
        if row.target_ratio is not None and not pd.isna(row.target_ratio):
            note.append("OK" if row.meets_target else "OVER TARGET")
        if row.variant != "bare" and row.ratio_to_bare < 1.0:
            note.append("faster than bare")
        if row.k_mean is not None and not pd.isna(row.k_mean) and row.variant == "kneedle":
            note.append(f"k_mean {row.k_mean:.2f}")
        if row.moe_latency_ms_p50_sum is not None and not pd.isna(row.moe_latency_ms_p50_sum):
            note.append(f"sum of MoE-block p50 {row.moe_latency_ms_p50_sum:.3f} ms")
        target = "" if row.target_ratio is None or pd.isna(row.target_ratio) else f"{row.target_ratio:.2f}"
        lines.append(f"{row.variant:<11} {row.phase:<16} {row.median_ms:>8.3f} {row.unit[3:]:<3} "
                     f"{row.ratio_to_bare:>6.3f}x {target:>7}  {'; '.join(note)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    PROFILER_OPTIONS.clear()
    PROFILER_OPTIONS["analyses"] = ANALYSES[args.analyses]

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available: pass --device cpu (or --smoke)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    config_kwargs = dict(TINY_OLMOE if args.smoke else OLMOE_1B_7B)
    if args.layers:
        config_kwargs["num_hidden_layers"] = args.layers
    meta = dict(
        mode="smoke" if args.smoke else "full", device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        dtype=str(dtype).removeprefix("torch."), cpu_threads=torch.get_num_threads(), torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    print(f"overhead benchmark: {meta['mode']} OLMoE on {meta['device_name']} ({meta['dtype']}), torch "
          f"{meta['torch_version']}, transformers {meta['transformers_version']}")
    t0 = time.perf_counter()
    model = build_model(config_kwargs, device, dtype, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {n_params / 1e9:.3f} B params in {time.perf_counter() - t0:.1f} s; prefill "
          f"{args.prefill_batch}x{args.prefill_len} (x{args.prefill_iters} per sample), decode 1x{args.decode_tokens} "
          f"tokens after a {args.decode_prompt}-token prompt; {args.reps} rounds + {args.warmup} warm-up")
    work = Workload(model, device, args)
    variants = args.variant_list

    samples, extras = run_timing(model, work, variants, args.reps, args.warmup)
    df = summarise(samples, extras, variants, meta)
    compiled_on = args.compiled == "on" or (args.compiled == "auto" and device.type == "cuda")
    if compiled_on:
        compiled_variants = [v for v in COMPILED_VARIANTS if v in variants]
        print(f"compiled variants ({', '.join(compiled_variants)}): torch.compile prefill, static-cache generate "
              f"decode ({args.decode_tokens + args.static_short} - {args.static_short} new tokens)")
        c_samples, c_extras = run_compiled(model, work, compiled_variants, args.reps, args.warmup, args.static_short)
        df = pd.concat([df, summarise(c_samples, c_extras, compiled_variants, meta, COMPILED_PHASES)],
                       ignore_index=True)
        compiled_note = None
    else:
        compiled_note = (f"compiled/static-cache variants skipped (--compiled {args.compiled} on {device.type}: "
                         f"inductor compiles are slow on CPU; pass --compiled on to include them)")

    sync = dict(checked=False, reason="--no-sync-check") if args.no_sync_check else sync_check(model, work, variants, device)
    via_model = args.memory_via_model == "on" or (args.memory_via_model == "auto" and device.type == "cuda")
    memory = memory_check(model, device, args.memory_chunk, via_model)

    bare_pref = df[(df.variant == "bare") & (df.phase == "prefill")].median_ms.item()
    experts = dict(grouped_mm_prefill_ms=bare_pref)
    if "bare_eager" in variants:
        eager = df[(df.variant == "bare_eager") & (df.phase == "prefill")].median_ms.item()
        experts.update(eager_prefill_ms=eager, eager_over_grouped_mm=eager / bare_pref)
    kneedle = {}
    if "kneedle" in variants:
        for phase in PHASES:
            row = df[(df.variant == "kneedle") & (df.phase == phase)].iloc[0]
            kneedle[phase] = dict(k_mean=row.k_mean, k_max=KNEEDLE_PARAMS["k_max"], ratio_to_bare=row.ratio_to_bare,
                                  faster_than_bare=row.faster_than_bare)
    targets = {f"{v}/{p}": dict(target=t, ratio=float(df[(df.variant == v) & (df.phase == p)].ratio_to_bare.item()))
               for (v, p), t in TARGETS.items() if v in variants and p in set(df.phase)}
    for entry in targets.values():
        entry["met"] = entry["ratio"] <= entry["target"]

    results = dict(
        meta=meta, config=dict(model=config_kwargs, **{k: v for k, v in vars(args).items() if k not in ("variant_list", "variants")},
                               variants=variants, params=n_params),
        results=df.to_dict(orient="records"), targets=targets, experts_implementation=experts, kneedle=kneedle,
        sync_check=sync, memory_check=memory, compiled=dict(run=compiled_on, note=compiled_note),
        wall_s=time.perf_counter() - t0,
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, parquet_path = out / "overhead.json", out / "overhead.parquet"
    text = json.dumps(jsonable(results), indent=2)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    atomic_write(parquet_path, lambda tmp: df.to_parquet(tmp, index=False))

    print()
    print(format_table(df))
    print()
    if compiled_note:
        print(compiled_note)
    elif df["counts_exact"].notna().any():
        exact = df[df["counts_exact"].notna()]
        print("compiled: profiler counted exactly the tokens that ran: " + ", ".join(
            f"{r.variant}/{r.phase} {'yes' if r.counts_exact else 'NO'}" for r in exact.itertuples()))
    if "bare_eager" in variants:
        print(f"experts_implementation: eager / grouped_mm bare prefill = {experts['eager_over_grouped_mm']:.3f}x")
    if sync.get("checked"):
        print(f"sync check: profiler adds no host-device sync: {sync['profiler_adds_no_sync']}; strict "
              f"set_sync_debug_mode('error') passes — bare: {sync['bare_strict_pass']}, profiled: "
              f"{sync['strict_pass_all_profiled']}; strict inside every MoE block (router + profiler hooks + experts), "
              f"all variants and phases: {sync['strict_moe_blocks_pass_all']}")
        for variant, entry in sync["variants"].items():
            print("  " + variant + ": " + ", ".join(
                f"{ph} {'pass' if e['strict_pass'] else 'FAIL'} ({e['sync_calls']} syncing calls"
                + (f", {e['extra_sync_calls_vs_bare']:+d} vs bare" if e['extra_sync_calls_vs_bare'] is not None else "")
                + ")" + (f" at {', '.join(e['sync_sites'])}" if e["sync_sites"] else "") for ph, e in entry.items()))
    else:
        print(f"sync check: skipped ({sync.get('reason')})")
    for route in ("recorder", "model"):
        if route in memory:
            a, b = memory[route]["points"]
            alloc = "" if a["allocated_delta_bytes"] is None else \
                f"; memory_allocated delta {a['allocated_delta_bytes']:,} vs {b['allocated_delta_bytes']:,} B"
            print(f"memory ({route}): buffer_bytes {a['buffer_bytes']:,} B after {a['tokens_seen']:,} tokens vs "
                  f"{b['buffer_bytes']:,} B after {b['tokens_seen']:,}{alloc} -> "
                  f"{'independent of tokens' if memory[route]['buffer_bytes_equal'] and memory[route]['allocated_equal'] in (True, None) else 'GROWS'}")
    print(f"wrote {json_path} and {parquet_path} ({results['wall_s']:.1f} s)")
    return results


if __name__ == "__main__":
    main()
