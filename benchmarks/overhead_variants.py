"""What benchmarks/overhead.py times, eagerly: the variants (bare, profiled in several ways, eager experts), the
phases, the target ratios to bare, the fixed-input workload (prefill, KV-cache decode), the interleaved timing rounds
and their summary table. Public: benchmarks/overhead_compiled.py, overhead_checks.py and multi_device.py use it too.
Importing it runs nothing."""
from __future__ import annotations

import argparse
import inspect
import math
import statistics
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.common import set_experts_implementation, timed_ms

# -- configuration ------------------------------------------------------------------------------------------------

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
        return timed_ms(self.prefill, self.device) / self.prefill_iters

    def timed_decode_ms_per_token(self) -> float:
        state = self.decode_start()  # prompt: untimed
        return timed_ms(lambda: self.decode_steps(state, self.decode_tokens), self.device) / self.decode_tokens


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
