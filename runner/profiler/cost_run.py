"""A job's whole-model cost in one place: FLOPs per token of the whole forward (analytic at the job's shapes and
measured), parameter and KV-cache bytes per token from the experts the tokens really activated, and S-MFU / S-MBU
against the device's peaks (MoE-CAP, arXiv 2412.07067: sparse, i.e. only the activated experts count).

Prefill reads every dense parameter and each routed expert that at least one token of the batch chose, once per
forward; a decode step (one token for each of the batch's sequences) reads the same, deduplicated per step, plus the
static KV cache generate() allocates (max_length - 1 = seq_len + decode_tokens - 1 slots, attended over whole by every
step). S-MFU / S-MBU divide by the peak of every GPU the model occupies, as MoE-CAP does. Definitions and how they
differ from MoE-CAP's reference code: docs/flops.md.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .phases import DECODE, PREFILL
from .cost_model import byte_counts, expected_unique


def element_bytes(model) -> int:
    """Bytes of one element of the model's floating-point parameters (what its KV cache holds too)."""
    return next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)


def _unique_experts(profiler, experts: pd.DataFrame | None, phase: str, tokens_per_forward: int) -> list[float]:
    """Distinct experts read per forward of each MoE layer. Prefill: the experts that got a token (over the job's
    prefill batches); decode: expected per step from the decode loads (tokens drawn independently); without routing
    (meta weights): expected under uniform loads at the live top-k."""
    out = []
    for layer in profiler.layers:
        k, E = profiler.cost.live_k(layer, None), layer.num_experts
        rows = None if experts is None else experts[(experts["phase"] == phase) & (experts["layer"] == layer.layer_id)]
        if rows is None or not len(rows) or not rows["tokens"].sum():
            out.append(expected_unique([k] * E, E, tokens_per_forward) if phase == DECODE or rows is None
                       else float(E))
        elif phase == PREFILL:
            out.append(float((rows["tokens"] > 0).sum()))
        else:
            tokens = rows["tokens"].sum() / k  # assignments / k = tokens
            out.append(expected_unique(rows["tokens"].tolist(), tokens, tokens_per_forward))
    return out


def _moe_per_token(profiler, layers: pd.DataFrame | None, phase: str) -> float:
    """The MoE layers' FLOPs per token of a phase: the routed count where recorded (it follows a dynamic k), else the
    analytic count at the live top-k."""
    rows = layers[layers["phase"] == phase] if layers is not None and "phase" in layers else None
    if rows is not None and "flops" in rows and len(rows) and rows["tokens"].gt(0).all():
        return float((rows["flops"] / rows["tokens"]).sum())
    return float(profiler.flops_per_token()["flops"].sum())


def _whole_forward_mismatch(profiler, forward, measured: int | None, measured_tokens: int, seq_len: int) -> str | None:
    """Why the whole forward, marked exact, is not: its measured prefill FLOPs differ from the analytic count of the
    same sequences (their MoE layers at the routed count of the measured tokens). None when they agree or when
    nothing comparable was measured."""
    expected = profiler.cost.expected_in(PREFILL)
    if not forward.exact or not measured or expected is None or not measured_tokens or measured_tokens % seq_len:
        return None
    analytic = forward.flops(measured_tokens // seq_len, seq_len) + sum(expected)
    if analytic == measured:
        return None
    return (f"whole forward: measured {measured:,} FLOPs but the analytic count of the same tokens is {analytic:,.0f}: "
            f"the analytic count is wrong for this model (stored as not exact)")


def cost_columns(profiler, layers: pd.DataFrame | None, experts: pd.DataFrame | None, *, batch: int, seq_len: int,
                 decode_tokens: int = 0, measured_tokens: int = 0, tokens_per_s: float | None = None,
                 tpot_ms: float | None = None, peak_tflops: float | None = None,
                 peak_bandwidth_gbs: float | None = None, gpus: int = 1) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """The runs columns of the whole-model cost, and `layers` with `param_bytes` (routed-expert bytes read per forward:
    per batch in prefill, per step in decode). gpus: the cards the model occupies (S-MFU / S-MBU divide by all of
    them)."""
    model, forward = profiler.model, profiler.forward_cost()
    tokens = batch * seq_len
    moe = _moe_per_token(profiler, layers, PREFILL)
    measured = profiler.model_flops_measured().get(PREFILL)
    params = profiler.param_counts()
    counts, element = byte_counts(model, profiler.layers), element_bytes(model)
    prefill_experts = counts.per_forward(_unique_experts(profiler, experts, PREFILL, tokens))
    # generate()'s static cache: max_length - 1 slots (the last token is never fed back), all read by every step
    slots = seq_len + max(decode_tokens - 1, 0)
    kv = forward.kv_bytes_per_token(slots, element, slots if decode_tokens else None)
    # exact = marked exact and, where measured, equal to the analytic count of the very tokens measured (like with
    # like: a dynamic-k count measured on the first batch is held against that batch's routed count)
    warning = _whole_forward_mismatch(profiler, forward, measured, measured_tokens, seq_len)
    row = dict(
        model_flops_per_token_analytic=forward.per_token(batch, seq_len, moe_per_token=moe),
        model_flops_per_token_measured=measured / measured_tokens if measured and measured_tokens else None,
        model_flops_exact=forward.exact and warning is None, model_flops_warning=warning,
        attention_flops_per_token_causal=forward.attention_flops(batch, seq_len, causal=True) / tokens,
        params_active_nonembedding=float(params["params_active_nonembedding"]),
        param_bytes_per_token=(counts.dense + sum(prefill_experts)) / tokens,
        kv_cache_bytes_per_token=kv, peak_tflops=peak_tflops, peak_bandwidth_gbs=peak_bandwidth_gbs,
    )
    if peak_tflops and tokens_per_s:
        row["s_mfu_prefill"] = row["model_flops_per_token_analytic"] * tokens_per_s / (gpus * peak_tflops * 1e12)
    decode_experts = counts.per_forward(_unique_experts(profiler, experts, DECODE, batch)) if decode_tokens else None
    if decode_experts is not None:
        row["model_flops_per_token_decode"] = forward.decode_per_token(
            batch, slots, slots, moe_per_token=_moe_per_token(profiler, layers, DECODE))
        row["decode_bytes_per_step"] = (counts.dense + sum(decode_experts)
                                        + forward.kv_cache_bytes(batch, slots, element, slots))
        if peak_bandwidth_gbs and tpot_ms:
            row["s_mbu_decode"] = row["decode_bytes_per_step"] / (tpot_ms / 1e3) / (gpus * peak_bandwidth_gbs * 1e9)
    if layers is not None and len(layers):
        by_phase = {PREFILL: prefill_experts, DECODE: decode_experts}
        positions = {layer.layer_id: layer.position for layer in profiler.layers}
        layers = layers.copy()
        phases = layers["phase"] if "phase" in layers else pd.Series(PREFILL, index=layers.index)
        layers["param_bytes"] = [
            (by_phase.get(phase) or [None] * len(positions))[positions[layer]]
            for phase, layer in zip(phases, layers["layer"])]
    return row, layers
