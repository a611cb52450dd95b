"""benchmarks/overhead.py's compiled variants: torch.compile prefill and static-cache generate decode (transformers
compiles the decode step with CUDA graphs), each variant on its own module tree over the same weights. Importing it
runs nothing."""
from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import sync, timed_ms
from benchmarks.overhead_variants import COMPILED_PHASES, Workload, make_profiler


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
                sync(device)
                log(f"  compiled {v}: warm-up (compile + CUDA-graph capture) {time.perf_counter() - t:.1f} s")
            for r in range(warmup_rounds + rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for v in order:
                    profiler = profilers[v]
                    if profiler is not None:
                        profiler.reset()
                    ms = timed_ms(lambda: [compiled[v](input_ids=work.prefill_ids, use_cache=False, logits_to_keep=1)
                                            for _ in range(work.prefill_iters)], device) / work.prefill_iters
                    stats = _compiled_stats(profiler, prefill_tokens)
                    if profiler is not None:
                        profiler.reset()
                    made: list[int] = []
                    t_long = timed_ms(lambda: made.append(generate(twins[v], long_)), device)
                    t_short = timed_ms(lambda: made.append(generate(twins[v], short)), device)
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
