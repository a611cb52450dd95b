"""Find the MoE layers of a model and resolve their dimensions (handlers say where to look)."""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from handlers import Handler, Resolved, get_handler, resolve_dim
from handlers.base import DIMENSIONS, GENERIC, RouterOutput, TopKLocation, TopKOwner

from . import upstream
from .cost_formulas import LayerCost, layer_cost


class NoMoEError(ValueError):
    """The model has no module that looks like a Mixture-of-Experts block."""


@dataclass
class MoELayer:
    position: int  # index among the MoE layers
    layer_id: int  # the model's own layer index
    name: str  # module path of the MoE block
    block: nn.Module
    router: nn.Module | None
    experts: nn.Module
    handler: Handler
    shared: list[tuple[str, nn.Module]] = field(default_factory=list)  # counted with this layer
    shared_gate: nn.Module | None = None
    dims: dict[str, Resolved] = field(default_factory=dict)
    router_width: int = 0
    cost: LayerCost | None = None
    warnings: list[str] = field(default_factory=list)
    # what this transformers version really does (older 5.x releases differ from the handler's defaults)
    router_output: RouterOutput = "triple"
    logits_index: int | None = 0
    experts_take_routing: bool = True
    top_k_attr: TopKLocation = TopKLocation("router", "top_k")
    zero_slots_run: bool = False  # zero-computation slots run on real experts (cost like them): handler + release

    @property
    def num_experts(self) -> int:
        return self.dims["num_experts"].value

    def computed_pairs(self, tokens: int, assignments: int, top_k: int | None) -> int:
        """The (token, expert) pairs whose expert FLOPs ran: the routed assignments, or every top-k slot where the
        architecture runs its zero-computation slots on real experts (handlers: zero_slots_run_since)."""
        return tokens * top_k if self.zero_slots_run and top_k else assignments

    def measured_modules(self) -> list[nn.Module]:
        """The modules whose executed FLOPs make up this MoE layer (no module counted twice)."""
        parts = [self.block.get_submodule(part) if part else self.block for part in self.handler.measured_parts]
        outside = [m for n, m in self.shared if not n.startswith(self.name + ".")]
        return parts + outside


_LAYER_ID = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")


def layer_id_of(path: str, fallback: int) -> int:
    ids = _LAYER_ID.findall(path)
    return int(ids[-1]) if ids else fallback


def text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def _router_of(block: nn.Module, handler: Handler) -> nn.Module | None:
    for attr in handler.router_attrs:
        child = getattr(block, attr, None)
        if isinstance(child, nn.Module):
            return child
    return None


def _is_block(module: nn.Module, handler: Handler) -> bool:
    experts = getattr(module, handler.experts_attr, None)
    return isinstance(experts, nn.Module) and _router_of(module, handler) is not None


def _router_weight(router: nn.Module | None) -> torch.Tensor | None:
    """The router's [E_router, H] projection: the first 2-D parameter (weight, layer.weight, wg.weight, ...)."""
    if router is None:
        return None
    for _, param in router.named_parameters():
        if param.dim() == 2:
            return param
    return None


def _expert_param(experts: nn.Module) -> tuple[str, torch.Tensor] | None:
    for name in ("down_proj", "w2", "mlp.w2", "output_linear.weight", "weight"):
        node: Any = experts
        for part in name.split("."):
            node = getattr(node, part, None)
        if isinstance(node, torch.Tensor):
            return name, node
    return None


def _introspect(layer: MoELayer) -> dict[str, tuple[int, str]]:
    """Dimensions read off module attributes and parameter shapes."""
    found: dict[str, tuple[int, str]] = {}
    router_weight = _router_weight(layer.router)
    if router_weight is not None:
        found["hidden_dim"] = (router_weight.shape[1], "router weight shape[1]")
    experts = layer.experts
    if isinstance(getattr(experts, "num_experts", None), int):
        found["num_experts"] = (experts.num_experts, "experts.num_experts")
    if isinstance(getattr(experts, "intermediate_dim", None), int):
        found["expert_dim"] = (experts.intermediate_dim, "experts.intermediate_dim")
    param = _expert_param(experts)
    if param is not None:
        name, weight = param
        if weight.dim() == 3:
            found.setdefault("num_experts", (weight.shape[0], f"experts.{name}.shape[0]"))
            inner_axis = 1 if getattr(experts, "is_transposed", False) else 2
            found.setdefault("expert_dim", (weight.shape[inner_axis], f"experts.{name}.shape[{inner_axis}]"))
        elif weight.dim() == 2 and "num_experts" in found:  # 2-D concatenated experts, [E * I, H]
            found.setdefault("expert_dim", (weight.shape[0] // found["num_experts"][0], f"experts.{name}.shape[0] / E"))
    if "num_experts" not in found and router_weight is not None:
        found["num_experts"] = (router_weight.shape[0], "router weight shape[0]")
    top_k = read_live_top_k(layer)
    if top_k is not None:
        found["top_k"] = (top_k, str(layer.top_k_attr))
    shared_width = 0
    hidden = found.get("hidden_dim", (None,))[0]
    for _, module in layer.shared:
        shared_width += _shared_width(module, hidden)
    found["shared_expert_dim"] = (
        (shared_width, "shared expert down projection in_features") if layer.shared else (0, "no shared expert module")
    )
    return found


def _shared_width(module: nn.Module, hidden: int | None) -> int:
    """Intermediate width of a shared MLP: the in_features of its projection back to H (summed over fused experts)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear) and sub.out_features == hidden:
            return sub.in_features
    down = getattr(module, "down_proj", None)
    if isinstance(down, torch.Tensor) and down.dim() == 3 and down.shape[1] == hidden:  # fused [S, H, I]
        return down.shape[0] * down.shape[2]
    return 0


def _adapt_to_installed_version(layer: MoELayer) -> None:
    """Older transformers 5.x releases route some architectures differently (a bare nn.Linear router returning
    logits, top-k kept on the block, experts that take logits): read it off the modules."""
    handler = layer.handler
    layer.router_output, layer.logits_index = handler.router_output, handler.logits_index
    layer.experts_take_routing, layer.top_k_attr = handler.experts_take_routing, handler.top_k_attr
    since = handler.zero_slots_run_since
    layer.zero_slots_run = since is not None and upstream.transformers_release() >= since
    if handler.router_output != "none" and type(layer.router) is nn.Linear:
        layer.router_output, layer.logits_index = "logits", None
    try:
        params = list(inspect.signature(layer.experts.forward).parameters)
    except (TypeError, ValueError):
        params = []
    if len(params) >= 2 and "index" not in params[1] and "idx" not in params[1] and "expert" not in params[1]:
        layer.experts_take_routing = False
    where = handler.top_k_attr
    if where.owner in ("router", "block") and not isinstance(_read(layer, where), int):
        config_field = next((f for f in handler.top_k if isinstance(f, str) and "." not in f), "num_experts_per_tok")
        for alternative in (TopKLocation("block", "top_k"), TopKLocation("router", "top_k"),
                            TopKLocation("config", config_field)):
            if isinstance(_read(layer, alternative), int):
                layer.top_k_attr = alternative
                break


def _read(layer: MoELayer, where: TopKLocation) -> Any:
    target = top_k_owner(layer, where.owner)
    return getattr(target, where.attr, None) if target is not None else None


def read_live_top_k(layer: MoELayer) -> int | None:
    value = _read(layer, layer.top_k_attr)
    return value if isinstance(value, int) else None


def write_live_top_k(layer: MoELayer, k: int) -> None:
    setattr(top_k_owner(layer, layer.top_k_attr.owner), layer.top_k_attr.attr, k)


def top_k_owner(layer: MoELayer, owner: TopKOwner) -> Any:
    """The object holding the live top-k: the router, the block, or the config the modules read it from."""
    if owner == "router":
        return layer.router
    if owner == "block":
        return layer.block
    return next((c for c in (getattr(m, "config", None) for m in (layer.router, layer.block, layer.experts))
                 if c is not None), None)


def scan_model(
    model: nn.Module,
    *,
    overrides: Mapping[str, int] | None = None,
    fallbacks: Mapping[str, int] | None = None,
) -> list[MoELayer]:
    """All MoE layers of `model`, in forward order, with resolved dimensions."""
    unknown = set(overrides or {}) | set(fallbacks or {})
    unknown -= set(DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown dimension(s) {sorted(unknown)}; valid: {', '.join(DIMENSIONS)}")
    config = text_config(model)
    model_type = getattr(config, "model_type", None)
    handler = get_handler(model_type)
    modules = dict(model.named_modules())
    layers: list[MoELayer] = []
    claimed: set[str] = set()
    for name, module in modules.items():
        if not name or any(name.startswith(c + ".") for c in claimed):
            continue
        if not _is_block(module, handler):
            continue
        if handler.block_attrs and name.rpartition(".")[2] not in handler.block_attrs:
            continue
        claimed.add(name)
        layer = MoELayer(
            position=len(layers), layer_id=layer_id_of(name, len(layers)), name=name, block=module,
            router=_router_of(module, handler), experts=getattr(module, handler.experts_attr), handler=handler,
        )
        for attr in handler.shared_attrs:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Module):
                layer.shared.append((f"{name}.{attr}", child))
        parent = name.rpartition(".")[0]
        for attr in handler.layer_shared_attrs:
            child = getattr(modules.get(parent), attr, None) if parent in modules else None
            if isinstance(child, nn.Module):
                layer.shared.append((f"{parent}.{attr}", child))
        _adapt_to_installed_version(layer)
        gate = getattr(module, handler.shared_gate_attr, None)
        layer.shared_gate = gate if isinstance(gate, nn.Module) else None
        _resolve(layer, config, overrides, fallbacks)
        layers.append(layer)
    if not layers:
        kinds = sorted({type(m).__name__ for m in modules.values()})
        raise NoMoEError(
            f"no MoE block found in {type(model).__name__} (model_type={model_type!r}, handler "
            f"{'generic' if handler is GENERIC else handler.model_types[0]}): scanned {len(modules)} modules for a child "
            f"'{handler.experts_attr}' beside a router in {handler.router_attrs}; module classes seen: "
            f"{', '.join(kinds[:12])}{' ...' if len(kinds) > 12 else ''}"
        )
    return layers


def _resolve(layer: MoELayer, config: Any, overrides, fallbacks) -> None:
    handler = layer.handler
    module_values = _introspect(layer)
    for dim in DIMENSIONS:
        resolved, warning = resolve_dim(
            dim, config=config, config_fields=getattr(handler, dim), module_value=module_values.get(dim),
            overrides=overrides, fallbacks=fallbacks,
        )
        if dim == "shared_expert_dim" and not layer.shared and resolved.source == "config":
            # the config names a width but this layer has no shared expert (e.g. a size of 0 / absent module)
            resolved = Resolved(dim, 0, "module", "no shared expert module")
            warning = None
        layer.dims[dim] = resolved
        if warning and dim != "top_k":
            layer.warnings.append(warning)
    router_weight = _router_weight(layer.router)
    layer.router_width = router_weight.shape[0] if router_weight is not None else layer.num_experts
    layer.cost = layer_cost(
        hidden_dim=layer.dims["hidden_dim"].value, router_width=layer.router_width,
        expert_dim=layer.dims["expert_dim"].value, gated=handler.gated,
        shared_expert_dim=layer.dims["shared_expert_dim"].value, shared_gated=handler.shared_gated,
        shared_gate=layer.shared_gate is not None,
    )
