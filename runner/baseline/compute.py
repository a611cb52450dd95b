"""The built-in baseline: every conf/model/*.yaml on the meta device (analytic numbers), and a real forward pass of
the tiny (random-weight) models and of the trained checkpoints shipped in the package over the built-in text (measured
FLOPs and loss)."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ..profiler.phases import PREFILL
from ..profiler.selector_registry import OWN_ROUTING
from ..job.threads import intra_op_threads
from .entries import LOSS_RTOL, ROUTING_RTOL, Entry, clean, grouped, selector_label

SEED = 0
BLOCKS = 4  # fixed-length blocks of the built-in text, run as one batch
SEQ_LEN = 64
DATASET = f"builtin:{BLOCKS}x{SEQ_LEN}"
OTHER_K = 4  # the tiny models' second top-k (twice their default of 2)
SELECTOR = ("kneedle", {"k_max": 4})
CONTEXT = 4096  # tokens of the sequence the analytic whole-model figures are for


def model_configs() -> list:
    from omegaconf import OmegaConf

    from ..config.schema import CONFIG_DIR, ModelConfig, register_resolvers

    register_resolvers()  # ${trained:NAME} in the yamls of the shipped checkpoints
    configs = []
    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        configs.append(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))))
    return configs


def k_values(default_k: int, num_experts: int) -> list[int]:
    """The default top-k and a few others: 1, half, default, double (within 1..num_experts)."""
    return sorted({k for k in (1, max(default_k // 2, 1), default_k, 2 * default_k) if 1 <= k <= num_experts})


def analytic_entries(name: str, profiler, ks: Sequence[int]) -> list[Entry]:
    from ..profiler.cost_run import element_bytes

    layers = profiler.layers
    forward = profiler.forward_cost()
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
        counts = profiler.param_counts(k)
        out.append(Entry(name, "params_active", clean(counts["params_active"]), k=k))
        out.append(Entry(name, "params_active_nonembedding", clean(counts["params_active_nonembedding"]), k=k))
        # the whole forward of one CONTEXT-token sequence (no causal halving), and its causal attention term
        out.append(Entry(name, f"model_flops_per_token_ctx{CONTEXT}",
                         clean(profiler.model_flops_per_token(1, CONTEXT, k=k)), k=k))
        # one decode step with CONTEXT tokens in a dynamic cache (MLA re-expands its latent at every position)
        out.append(Entry(name, f"model_flops_per_token_decode_ctx{CONTEXT}",
                         clean(forward.decode_per_token(1, CONTEXT, moe_per_token=float(frame["flops"].sum()))), k=k))
    out.append(Entry(name, "model_flops_exact", clean(forward.exact)))
    out.append(Entry(name, f"attention_flops_per_token_causal_ctx{CONTEXT}",
                     clean(forward.attention_flops(1, CONTEXT, causal=True) / CONTEXT)))
    # what the cache holds per token of a CONTEXT-token sequence, in the model's dtype (a meta build: the checkpoint's)
    out.append(Entry(name, f"kv_cache_bytes_per_token_ctx{CONTEXT}",
                     clean(forward.kv_bytes_per_token(CONTEXT, element_bytes(profiler.model)))))
    return out


def measured_entries(name: str, loaded, profiler, ids, k: int, selector: str) -> list[Entry]:
    """One forward pass of `ids` with FLOP counting: measured FLOPs per token (per layer, total) and the loss."""
    import torch

    from ..profiler.evaluate import batch_sums

    profiler.reset()
    with torch.no_grad(), profiler.measure_flops():
        logits = loaded.model(input_ids=ids, use_cache=False).logits
    sums = batch_sums(logits, ids, None, None)
    frame = profiler.layers_df()
    tokens = int(ids.numel())
    routing = ROUTING_RTOL if selector != OWN_ROUTING else None
    fields = dict(k=k, selector=selector, dataset=DATASET)
    per_layer = [(layer, measured / tokens) for layer, measured in zip(frame["layer"], frame["flops_measured"])]
    out = grouped(name, "flops_measured_per_token", per_layer, tolerance=routing, **fields)
    out.append(Entry(name, "moe_flops_per_token_measured", clean(sum(v for _, v in per_layer)), tolerance=routing,
                     **fields))
    out.append(Entry(name, "model_flops_per_token_measured", clean(profiler.model_flops_measured()[PREFILL] / tokens),
                     tolerance=routing, **fields))
    out.append(Entry(name, "loss", clean(sums["nll"] / sums["targets"]), tolerance=LOSS_RTOL, **fields))
    if routing is not None:
        out.append(Entry(name, "k_mean", clean(frame["k_mean"].mean()), tolerance=routing, **fields))
    return out


def model_entries(model_cfg, documents=None) -> list[Entry]:
    from ..job import data, models
    from ..profiler import MOEProfiler
    from ..config.schema import DeviceConfig, Weights

    from ..trained import is_shipped

    # a forward pass where the weights are here without a download: random init, or a checkpoint in the package
    measured = model_cfg.weights is Weights.random or is_shipped(model_cfg.hf_id)
    if not measured:
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
        if not measured:
            return out
        blocks = data.tokenize(documents, loaded.tokenizer, SEQ_LEN, "the built-in text")
        if blocks.num_blocks < BLOCKS:
            raise RuntimeError(f"the built-in text gives {blocks.num_blocks} blocks of {SEQ_LEN}, fewer than {BLOCKS}")
        ids = blocks.ids[:BLOCKS]
        with intra_op_threads(1):
            for k in sorted({default_k, OTHER_K}):
                profiler = MOEProfiler(loaded.model, verbose=False)
                try:
                    if k != default_k:
                        profiler.set_top_k(k)
                    out += measured_entries(model_cfg.name, loaded, profiler, ids, k, OWN_ROUTING)
                finally:
                    profiler.detach()
            name, params = SELECTOR
            profiler = MOEProfiler(loaded.model, verbose=False, selector=name, selector_params=params)
            try:
                out += measured_entries(model_cfg.name, loaded, profiler, ids, int(params["k_max"]),
                                        selector_label(name, params))
            finally:
                profiler.detach()
        return out
    finally:
        models.clear_cache()


def builtin_entries(report=None) -> list[Entry]:
    """Recompute every entry of the built-in baseline. A model that fails to build is reported through
    `report(name, message)` and contributes no entries (they show as missing)."""
    import warnings

    from ..job import data
    from ..errors import describe, known_errors
    from ..config.schema import DatasetConfig

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

