"""Changing the routing: the routers' live top-k, and per-token dynamic-k selectors that drop slots.

Every attribute changed is saved first (Attachment.save_once), so detach() and default_routing() restore the model's
own routing exactly.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

from . import experts, selectors, upstream
from .attach import Attachment, ProfilerError
from .metrics import router_probs
from .scan import MoELayer, read_live_top_k, top_k_owner, write_live_top_k


class Routing:
    def __init__(self, attachment: Attachment, layers: list[MoELayer], config: Any, model_type: str | None,
                 renormalize: str | bool):
        self.attachment, self.layers, self.config, self.model_type = attachment, layers, config, model_type
        self.handler = layers[0].handler
        self.renormalize = renormalize
        self.selector: Callable | None = None
        self.selector_name: str | None = None
        self.selector_params: dict[str, Any] = {}
        self.per_layer = self.per_index = False

    @property
    def top_k(self) -> int | None:
        return read_live_top_k(self.layers[0])

    def set_top_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ProfilerError(f"top-k must be an integer, got {k!r}")
        k = int(k)
        for layer in self.layers:
            if not layer.handler.top_k_settable:
                raise ProfilerError(f"{self.model_type}: top-k cannot change at run time ({layer.handler.note})")
            if not 1 <= k <= layer.num_experts:
                raise ProfilerError(
                    f"top-k must be between 1 and the number of experts ({layer.num_experts}) of layer "
                    f"{layer.layer_id}, got {k}"
                )
        if self.handler.group_limited:
            groups, keep = getattr(self.config, "n_group", None), getattr(self.config, "topk_group", None)
            if groups and keep and k > keep * self.layers[0].num_experts // groups:
                warnings.warn(
                    f"top-k {k} exceeds the {keep} of {groups} expert groups this router allows "
                    f"({keep * self.layers[0].num_experts // groups} experts): it will pick experts outside them",
                    stacklevel=3,
                )
        for layer in self.layers:
            self.attachment.save_once(top_k_owner(layer, layer.top_k_attr.owner), layer.top_k_attr.attr)
            write_live_top_k(layer, k)

    def set_selector(self, selector: str | Callable, *, fast_skip: bool = True, **params: Any) -> None:
        experts.register()
        for layer in self.layers:
            if not layer.handler.can_skip:
                raise ProfilerError(f"{self.model_type} cannot skip experts per token: {layer.handler.note}")
        use_fast = self._skip_implementation(fast_skip)
        name = selector if isinstance(selector, str) else getattr(selector, "__name__", "custom")
        function = selectors.get_selector(selector)
        k_max = int(params.pop("k_max", None) or self.top_k or self.layers[0].dims["top_k"].value)
        if isinstance(selector, str):
            selectors.validate_params(selector, {"k_max": k_max, **params}, self.layers[0].num_experts)
        ks = params.get("ks")
        if ks is not None and len(ks) != len(self.layers):
            raise ProfilerError(f"selector {name!r}: ks has {len(ks)} values for {len(self.layers)} MoE layers; give "
                                "one k per MoE layer")
        self.set_top_k(k_max)
        for layer in self.layers:
            if hasattr(layer.experts, upstream.EXPERT_PARALLEL):  # transformers >= 5.2x: sentinel handling is opt-in
                self.attachment.save_once(layer.experts, upstream.EXPERT_PARALLEL)
                setattr(layer.experts, upstream.EXPERT_PARALLEL, True)  # masks sentinel rows, not uninitialised memory
            config = getattr(layer.experts, "config", None)
            if use_fast and config is not None:
                self.attachment.save_once(config, upstream.EXPERTS_IMPLEMENTATION)
                setattr(config, upstream.EXPERTS_IMPLEMENTATION, experts.NAME)  # grouped_mm, one inference-time mask
        self.selector, self.selector_name = function, name
        self.selector_params = {"k_max": k_max, **params}
        self.per_layer = selectors.takes_position(function)
        self.per_index = selectors.takes_index(function)
        self.attachment.select = self.select

    def clear(self) -> None:
        """Forget the selector (detach() has restored the attributes it changed)."""
        self.selector, self.selector_name = None, None

    def _skip_implementation(self, fast_skip: bool) -> bool:
        """Whether dropped slots go through runner.profiler.experts' grouped forward; raises where nothing can skip them."""
        implementation = upstream.experts_implementation(self.config)
        experts_module = self.layers[0].experts
        decorated = implementation is not None and any(
            isinstance(getattr(experts_module, name, None), torch.Tensor) for name in ("gate_up_proj", "up_proj"))
        # transformers before the opt-in flag: eager experts one-hot over E classes and reject the sentinel
        eager_rejects = implementation == "eager" and (
            implementation in self.handler.sentinel_breaks or not hasattr(experts_module, upstream.EXPERT_PARALLEL))
        if implementation == "grouped_mm":
            return fast_skip
        if eager_rejects or implementation in self.handler.sentinel_breaks:
            if not decorated:
                raise ProfilerError(f"{self.model_type}'s {implementation!r} experts reject the sentinel index; "
                                    f"use experts_implementation='grouped_mm'")
            warnings.warn(f"{self.model_type}'s {implementation!r} experts reject the sentinel index: dropped slots "
                          f"run through {experts_module.__class__.__name__} with runner.profiler.experts' grouped forward",
                          stacklevel=4)
            return True
        return False

    def select(self, layer: MoELayer, logits: torch.Tensor, index: torch.Tensor, weights: torch.Tensor):
        """The router's k_max candidates with the slots the selector drops set to the sentinel index (num_experts,
        not computed) and weight 0."""
        params = dict(self.selector_params)
        params["k_max"] = index.shape[-1]
        if self.per_layer:  # a per-layer rule: a constant per layer, so compiled code traces each layer once
            params["position"] = layer.position
        if self.per_index:  # a rule on the candidates' expert ids (expert ablation)
            params["index"] = index
        keep = self.selector(router_probs(logits.reshape(-1, logits.shape[-1]), layer.handler.scoring), **params)
        keep = keep.to(device=index.device, dtype=torch.bool)
        new_index = torch.where(keep, index, layer.num_experts)  # sentinel: not computed
        new_weights = weights * keep
        if self._renormalizes(layer):
            # keep the router's own total weight (1, or its routed scaling factor) over the kept experts
            scale = weights.sum(-1, keepdim=True) / new_weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
            new_weights = new_weights * scale
        return new_index, new_weights.to(weights.dtype)

    def _renormalizes(self, layer: MoELayer) -> bool:
        if self.renormalize != "auto":
            return bool(self.renormalize)
        rule = layer.handler.renormalize
        if isinstance(rule, bool):
            return rule
        return bool(getattr(self.config, rule, False))
