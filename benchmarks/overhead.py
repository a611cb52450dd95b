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
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (OLMOE_1B_7B, TINY_OLMOE, atomic_write as _atomic_write,  # noqa: E402,F401
                               build_model, jsonable as _jsonable, set_experts_implementation, sync as _sync,
                               timed_ms as _timed_ms)

# -- configuration ------------------------------------------------------------------------------------------------

PRESETS = {
    "full": dict(device="cuda", reps=20, warmup=2, prefill_batch=8, prefill_len=512, prefill_iters=2,
                 decode_tokens=64, decode_prompt=128, memory_chunk=1000, threads=0),
    "smoke": dict(device="cpu", reps=2, warmup=1, prefill_batch=2, prefill_len=32, prefill_iters=1,
                  decode_tokens=4, decode_prompt=8, memory_chunk=1000, threads=1),
}

KNEEDLE_PARAMS = {"k_max": 8}
# name -> (profiler kwargs or None for no profiler, experts implementation)
VARIANTS: dict[str, tuple[dict[str, Any] | None, str]] = {
    "bare": (None, "grouped_mm"),
    "routing": (dict(), "grouped_mm"),
    "routing_none": (dict(analyses=()), "grouped_mm"),  # routing without the --analyses (the runner's analysis=none)
    "latency": (dict(latency=True), "grouped_mm"),
    "kneedle": (dict(selector="kneedle", selector_params=KNEEDLE_PARAMS), "grouped_mm"),
    "bare_eager": (None, "eager"),
}
PHASES = ("prefill", "decode")
COMPILED_VARIANTS = ("bare", "routing", "routing_none", "kneedle")
COMPILED_PHASES = ("compiled_prefill", "static_decode")
# (variant, phase) -> maximal ratio to bare, from the issue
_ROUTING_TARGETS = {"prefill": 1.02, "decode": 1.05, "compiled_prefill": 1.02, "static_decode": 1.03}
_KNEEDLE_TARGETS = {"prefill": 0.90, "decode": 1.10, "compiled_prefill": 1.00, "static_decode": 1.05}
# built without calls: nothing runs at import (tests/unit/test_benchmark_scripts.py)
TARGETS = {**{("routing", p): _ROUTING_TARGETS[p] for p in _ROUTING_TARGETS},
           **{("routing_none", p): _ROUTING_TARGETS[p] for p in _ROUTING_TARGETS},
           **{("kneedle", p): _KNEEDLE_TARGETS[p] for p in _KNEEDLE_TARGETS}}
MEMORY_TOKENS = (1_000, 100_000)


# -- helpers ------------------------------------------------------------------------------------------------------

def _cache_kwarg(model) -> str:
    """transformers renamed past_key_values -> cache (5.2x); accept both."""
    params = inspect.signature(type(model.model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class Workload:
    """The two timed phases, on fixed random inputs."""

    def __init__(self, model, device: torch.device, args: argparse.Namespace):
        self.model, self.device = model, device
        vocab = model.config.vocab_size
        gen = torch.Generator(device="cpu").manual_seed(1)
        self.prefill_ids = torch.randint(0, vocab, (args.prefill_batch, args.prefill_len), generator=gen).to(device)
        self.prompt_ids = torch.randint(0, vocab, (1, args.decode_prompt), generator=gen).to(device)
        self.prefill_iters = args.prefill_iters
        self.decode_tokens = args.decode_tokens
        self.cache_kw = _cache_kwarg(model)

    def prefill(self, iters: int | None = None) -> None:
        for _ in range(iters or self.prefill_iters):
            self.model(input_ids=self.prefill_ids, use_cache=False, logits_to_keep=1)

    def decode_start(self):
        out = self.model(input_ids=self.prompt_ids, use_cache=True, logits_to_keep=1)
        return _out_cache(out), out.logits[:, -1:].argmax(-1)

    def decode_steps(self, state, tokens: int) -> None:
        cache, token = state
        for _ in range(tokens):  # one forward per new token on the KV cache; greedy pick stays on device
            out = self.model(input_ids=token, use_cache=True, **{self.cache_kw: cache})
            cache, token = _out_cache(out), out.logits[:, -1:].argmax(-1)

    def timed_prefill_ms(self) -> float:
        return _timed_ms(self.prefill, self.device) / self.prefill_iters

    def timed_decode_ms_per_token(self) -> float:
        state = self.decode_start()  # prompt: untimed
        return _timed_ms(lambda: self.decode_steps(state, self.decode_tokens), self.device) / self.decode_tokens


# --analyses: what the profiler variants record beyond load balance, as the runner's `analysis=` presets (set once by
# main); the boundary margin is always on. vocab: the vocabulary table alone
ANALYSES = {"none": (), "basic": ("capacity",), "full": ("capacity", "coactivation", "transitions", "vocab"),
            "vocab": ("vocab",)}
PROFILER_OPTIONS: dict[str, Any] = {}


def make_profiler(model, variant: str):
    from runner.profiler import MOEProfiler

    kwargs, _ = VARIANTS[variant]
    if kwargs is None:
        return None
    kwargs = dict(kwargs)
    if "selector_params" in kwargs:
        kwargs["selector_params"] = dict(kwargs["selector_params"])
    return MOEProfiler(model, verbose=False, **{**PROFILER_OPTIONS, **kwargs})


def _profiler_stats(profiler) -> dict[str, float]:
    """k_mean over layers (tokens seen since the last reset) and, when timed, the sum of per-layer p50 latencies."""
    if profiler is None:
        return {}
    df = profiler.layers_df()
    stats: dict[str, float] = {}
    if "k_mean" in df:
        stats["k_mean"] = float(df["k_mean"].mean())
    if "latency_ms_p50" in df:
        stats["moe_latency_ms_p50_sum"] = float(df["latency_ms_p50"].sum())
    return stats


# -- timing -------------------------------------------------------------------------------------------------------

def run_timing(model, work: Workload, variants: list[str], rounds: int, warmup_rounds: int, log=print):
    samples = {(v, p): [] for v in variants for p in PHASES}
    extras: dict[tuple[str, str], list[dict[str, float]]] = {(v, p): [] for v in variants for p in PHASES}
    for r in range(warmup_rounds + rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        kept = r >= warmup_rounds
        for variant in order:
            set_experts_implementation(model, VARIANTS[variant][1])
            profiler = make_profiler(model, variant)
            try:
                with torch.inference_mode():
                    work.prefill(1)  # untimed: buffers allocate, hooks warm up
                    # no reset here: the recorder's bulk reductions then fall in the timed forwards at their
                    # steady-state rate (one per `capacity` tokens)
                    ms = work.timed_prefill_ms()
                    stats = _profiler_stats(profiler)
                    if profiler is not None:
                        profiler.reset()
                    work.decode_steps(work.decode_start(), 2)  # untimed
                    if profiler is not None:
                        profiler.reset()
                    ms_tok = work.timed_decode_ms_per_token()
                    stats_dec = _profiler_stats(profiler)
            finally:
                if profiler is not None:
                    profiler.detach()
                set_experts_implementation(model, "grouped_mm")
            if kept:
                samples[(variant, "prefill")].append(ms)
                samples[(variant, "decode")].append(ms_tok)
                extras[(variant, "prefill")].append(stats)
                extras[(variant, "decode")].append(stats_dec)
        if kept:
            log(f"  round {r + 1}/{warmup_rounds + rounds} (ms prefill/forward, decode/token): " + ", ".join(
                f"{v} {samples[(v, 'prefill')][-1]:.2f}/{samples[(v, 'decode')][-1]:.3f}" for v in variants))
        else:
            log(f"  round {r + 1}/{warmup_rounds + rounds}: warm-up, dropped")
    return samples, extras


# -- compiled: torch.compile prefill and static-cache generate -----------------------------------------------------

def _twin(model):
    """Another module tree over the same parameters and buffers: each variant hooks and compiles its own tree."""
    import copy

    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, shared)


def _raise_recompile_limit(limit: int = 64) -> None:
    """Several trees of one class compile the same code objects: keep dynamo from falling back to eager."""
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


class StaticGenerate:
    """Greedy static-cache generate of `max_new` tokens after the decode prompt; `stop_at` ends it earlier with the
    same cache size (so the same compiled step and CUDA graphs serve both lengths)."""

    def __init__(self, work: "Workload", max_new: int):
        self.work, self.max_new = work, max_new

    def __call__(self, model, new_tokens: int):
        from transformers import StoppingCriteria, StoppingCriteriaList

        prompt = self.work.prompt_ids
        length = prompt.shape[1] + new_tokens

        class StopAt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), input_ids.shape[1] >= length, dtype=torch.bool,
                                  device=input_ids.device)

        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=self.max_new,
                             min_new_tokens=self.max_new, do_sample=False, cache_implementation="static",
                             stopping_criteria=StoppingCriteriaList([StopAt()]), pad_token_id=0)
        return out.shape[1] - prompt.shape[1]  # new tokens really generated


def run_compiled(model, work: Workload, variants: list[str], rounds: int, warmup_rounds: int, short: int,
                 log=print):
    """Compiled prefill and static-cache decode per variant; samples[(variant, phase)] in ms (/forward, /token)."""
    _raise_recompile_limit()
    generate = StaticGenerate(work, work.decode_tokens + short)
    long_ = generate.max_new
    prefill_tokens = work.prefill_ids.numel() * work.prefill_iters
    prompt = work.prompt_ids.shape[1]
    twins = {v: _twin(model) for v in variants}
    profilers = {v: make_profiler(twins[v], v) for v in variants}  # attached before compiling
    compiled = {v: torch.compile(twins[v]) for v in variants}
    samples = {(v, p): [] for v in variants for p in COMPILED_PHASES}
    extras: dict[tuple[str, str], list[dict[str, Any]]] = {(v, p): [] for v in variants for p in COMPILED_PHASES}
    device = work.device
    try:
        with torch.no_grad():
            for v in variants:  # compile (prefill graph, decode step + CUDA graphs) outside the timed rounds
                t = time.perf_counter()
                for _ in range(2):
                    compiled[v](input_ids=work.prefill_ids, use_cache=False, logits_to_keep=1)
                for n in (long_, short, long_):
                    generate(twins[v], n)
                _sync(device)
                log(f"  compiled {v}: warm-up (compile + CUDA-graph capture) {time.perf_counter() - t:.1f} s")
            for r in range(warmup_rounds + rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for v in order:
                    profiler = profilers[v]
                    if profiler is not None:
                        profiler.reset()
                    ms = _timed_ms(lambda: [compiled[v](input_ids=work.prefill_ids, use_cache=False, logits_to_keep=1)
                                            for _ in range(work.prefill_iters)], device) / work.prefill_iters
                    stats = _compiled_stats(profiler, prefill_tokens)
                    if profiler is not None:
                        profiler.reset()
                    made: list[int] = []
                    t_long = _timed_ms(lambda: made.append(generate(twins[v], long_)), device)
                    t_short = _timed_ms(lambda: made.append(generate(twins[v], short)), device)
                    ms_tok = (t_long - t_short) / (long_ - short)
                    # forwards: the prompt once per run, then one token per new token but the last
                    stats_dec = _compiled_stats(profiler, sum(prompt + n - 1 for n in made))
                    stats_dec["generated"] = made
                    if r >= warmup_rounds:
                        samples[(v, "compiled_prefill")].append(ms)
                        samples[(v, "static_decode")].append(ms_tok)
                        extras[(v, "compiled_prefill")].append(stats)
                        extras[(v, "static_decode")].append(stats_dec)
                log(f"  compiled round {r + 1}/{warmup_rounds + rounds}" + (": warm-up, dropped" if r < warmup_rounds else
                    " (ms prefill/forward, static decode/token): " + ", ".join(
                        f"{v} {samples[(v, 'compiled_prefill')][-1]:.2f}/{samples[(v, 'static_decode')][-1]:.3f}"
                        for v in variants)))
    finally:
        for profiler in profilers.values():
            if profiler is not None:
                profiler.detach()
        torch._dynamo.reset()  # the twins' compiled code and CUDA graphs go with them
    return samples, extras


def _compiled_stats(profiler, expected_tokens: int) -> dict[str, Any]:
    """k_mean and whether every layer counted exactly the tokens that ran (no silent zeros under compile)."""
    if profiler is None:
        return {}
    df = profiler.layers_df()
    tokens = df.groupby("layer")["tokens"].sum()
    return dict(k_mean=float(df["k_mean"].mean()), counts_exact=bool((tokens == expected_tokens).all()),
                tokens_counted=int(tokens.min()), tokens_expected=int(expected_tokens))


def summarise(samples, extras, variants: list[str], meta: dict[str, Any], phases=PHASES) -> pd.DataFrame:
    rows = []
    for phase in phases:
        bare = statistics.median(samples[("bare", phase)])
        for variant in variants:
            s = samples[(variant, phase)]
            median = statistics.median(s)
            ratio = median / bare if bare > 0 else float("nan")
            target = TARGETS.get((variant, phase))
            ex = extras[(variant, phase)]
            k_means = [e["k_mean"] for e in ex if "k_mean" in e and math.isfinite(e["k_mean"])]
            lat = [e["moe_latency_ms_p50_sum"] for e in ex if "moe_latency_ms_p50_sum" in e]
            rows.append(dict(
                variant=variant, phase=phase, unit="ms/forward" if phase.endswith("prefill") else "ms/token",
                experts_implementation=VARIANTS[variant][1], profiled=VARIANTS[variant][0] is not None,
                median_ms=median, mean_ms=statistics.fmean(s), min_ms=min(s), max_ms=max(s),
                iqr_ms=float(np.subtract(*np.percentile(s, [75, 25]))), n=len(s), ratio_to_bare=ratio,
                target_ratio=target, meets_target=None if target is None else bool(ratio <= target),
                faster_than_bare=bool(ratio < 1.0) if variant != "bare" else None,
                k_mean=statistics.fmean(k_means) if k_means else None,
                moe_latency_ms_p50_sum=statistics.median(lat) if lat else None,
                counts_exact=all(e["counts_exact"] for e in ex) if any("counts_exact" in e for e in ex) else None,
                samples_ms=list(s), **meta,
            ))
    return pd.DataFrame(rows)


# -- host-device sync check ---------------------------------------------------------------------------------------

def _count_syncs(fn: Callable[[], Any]) -> tuple[int, list[str]]:
    """Number of syncing calls in fn() and the Python lines (file:line) that made them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    hits = [w for w in caught if "synchronizing" in str(w.message).lower()]
    return len(hits), sorted({f"{Path(w.filename).name}:{w.lineno}" for w in hits})


def _strict(fn: Callable[[], Any], whole: bool = True) -> tuple[bool, str | None]:
    """Run fn(); a syncing call raises where error mode is on (everywhere if `whole`, else where hooks set it)."""
    if whole:
        torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return True, None
    except RuntimeError as exc:
        return False, str(exc).splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextmanager
def _error_mode_inside_moe_blocks(model):
    """set_sync_debug_mode('error') from the first to the last hook of every MoE block (router, profiler hooks,
    experts), default mode elsewhere: isolates the profiler's hot path from syncs the rest of the model makes."""
    handles = []

    def on(module, args):
        torch.cuda.set_sync_debug_mode("error")

    def off(module, args, output):
        torch.cuda.set_sync_debug_mode("default")

    for layer in model.model.layers:
        handles.append(layer.mlp.register_forward_pre_hook(on, prepend=True))
        handles.append(layer.mlp.register_forward_hook(off))
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
        for handle in handles:
            handle.remove()


def sync_check(model, work: Workload, variants: list[str], device: torch.device) -> dict[str, Any]:
    """Per (variant, phase): does one warm forward pass set_sync_debug_mode('error'), and how many syncing calls
    does set_sync_debug_mode('warn') see, next to bare's count (the profiler must add none)."""
    if device.type != "cuda":
        return dict(checked=False, reason=f"device {device.type}: torch.cuda sync debug mode needs CUDA")
    results: dict[str, Any] = dict(checked=True, variants={})
    for variant in [v for v in variants if VARIANTS[v][1] == "grouped_mm"]:
        profiler = make_profiler(model, variant)
        entry: dict[str, Any] = {}
        try:
            with torch.inference_mode():
                work.prefill(1)
                state = work.decode_start()
                work.decode_steps(state, 1)
                _sync(device)
                for phase, fn in (("prefill", lambda: work.prefill(1)), ("decode", lambda: work.decode_steps(state, 1))):
                    passed, error = _strict(fn)
                    _sync(device)
                    with _error_mode_inside_moe_blocks(model):
                        moe_passed, moe_error = _strict(fn, whole=False)
                    _sync(device)
                    syncs, sites = _count_syncs(fn)
                    _sync(device)
                    entry[phase] = dict(strict_pass=passed, error=error, strict_moe_blocks_pass=moe_passed,
                                        strict_moe_blocks_error=moe_error, sync_calls=syncs, sync_sites=sites)
        finally:
            if profiler is not None:
                profiler.detach()
        results["variants"][variant] = entry
    bare = results["variants"].get("bare", {})
    for variant, entry in results["variants"].items():
        for phase, e in entry.items():
            base = bare.get(phase, {}).get("sync_calls")
            e["extra_sync_calls_vs_bare"] = None if base is None else e["sync_calls"] - base
    profiled = [e for v, entry in results["variants"].items() if v != "bare" for e in entry.values()]
    results["profiler_adds_no_sync"] = all(e["extra_sync_calls_vs_bare"] == 0 for e in profiled)
    results["strict_pass_all_profiled"] = all(e["strict_pass"] for e in profiled)
    results["bare_strict_pass"] = all(e["strict_pass"] for e in bare.values())
    results["strict_moe_blocks_pass_all"] = all(
        e["strict_moe_blocks_pass"] for entry in results["variants"].values() for e in entry.values())
    return results


# -- memory independence ------------------------------------------------------------------------------------------

def _allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def memory_check(model, device: torch.device, chunk: int, via_model: bool) -> dict[str, Any]:
    """Profiler memory after 1k and after 100k tokens seen: recorder.buffer_bytes and the memory_allocated delta
    since before the profiler existed. `recorder` feeds random routing straight into recorder.record (all layers,
    `chunk` tokens a call); `model` (CUDA) runs forwards of `chunk` tokens through the profiled model."""
    from runner.profiler import MOEProfiler

    out: dict[str, Any] = dict(tokens=list(MEMORY_TOKENS), chunk_tokens=chunk)
    routes = ["recorder"] + (["model"] if via_model else [])
    for route in routes:
        _sync(device)
        base = _allocated(device)
        profiler = MOEProfiler(model, verbose=False)
        rec = profiler.recorder
        num_layers, width, k = len(profiler.layers), rec.router_width, profiler.top_k
        dtype = next(model.parameters()).dtype
        gen = torch.Generator(device=device).manual_seed(0)
        points = []
        try:
            with torch.inference_mode():
                ids = torch.randint(0, model.config.vocab_size, (1, chunk), device=device, generator=gen)
                for target in MEMORY_TOKENS:
                    while rec.tokens[0] < target:
                        if route == "recorder":
                            logits = torch.randn(chunk, width, device=device, dtype=dtype, generator=gen)
                            weights, index = torch.softmax(logits.float(), -1).topk(k, dim=-1)
                            for layer in range(num_layers):
                                rec.record(layer, logits, index, weights.to(dtype))
                            del logits, weights, index
                        else:
                            model(input_ids=ids, use_cache=False, logits_to_keep=1)
                    rec.flush()  # steady state: pending routing (bounded by the recorder's capacity) reduced
                    _sync(device)
                    alloc = _allocated(device)
                    points.append(dict(tokens_seen=int(rec.tokens[0]), buffer_bytes=int(rec.buffer_bytes),
                                       allocated_delta_bytes=None if alloc is None else alloc - base))
                snapshot_ok = bool(profiler.layers_df()["tokens"].min() == rec.tokens[0])
        finally:
            profiler.detach()
        del profiler, rec  # free this route's buffers before the next route takes its baseline
        small, large = points
        out[route] = dict(
            points=points, snapshot_consistent=snapshot_ok,
            buffer_bytes_equal=small["buffer_bytes"] == large["buffer_bytes"],
            allocated_equal=None if small["allocated_delta_bytes"] is None
            else small["allocated_delta_bytes"] == large["allocated_delta_bytes"],
        )
    out["independent"] = all(out[r]["buffer_bytes_equal"] and out[r]["allocated_equal"] in (True, None) for r in routes)
    return out


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
    text = json.dumps(_jsonable(results), indent=2)
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    _atomic_write(parquet_path, lambda tmp: df.to_parquet(tmp, index=False))

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
