"""benchmarks/overhead.py's checks beside the timing: host-device syncs in a profiled forward
(torch.cuda.set_sync_debug_mode) and the profiler's memory after 1k vs 100k tokens seen. Importing it runs nothing."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import sync
from benchmarks.overhead_variants import VARIANTS, Workload, make_profiler

MEMORY_TOKENS = (1_000, 100_000)


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
                sync(device)
                for phase, fn in (("prefill", lambda: work.prefill(1)), ("decode", lambda: work.decode_steps(state, 1))):
                    passed, error = _strict(fn)
                    sync(device)
                    with _error_mode_inside_moe_blocks(model):
                        moe_passed, moe_error = _strict(fn, whole=False)
                    sync(device)
                    syncs, sites = _count_syncs(fn)
                    sync(device)
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
        sync(device)
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
                    sync(device)
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
