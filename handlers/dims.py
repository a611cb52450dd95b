"""The priority chain for MoE dimensions, with provenance.

    override (user, above config) > model.config > module introspection > fallback (user, below config) > default

Every resolved value remembers where it came from, so a report can say
`Expert dim: 1024 (model.config.intermediate_size)` and a results table can carry the source.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Mapping, Sequence

from .base import FieldSpec

SOURCES = ("override", "config", "module", "fallback", "default")

# Last resort when neither the config, the modules nor the user say anything (the seed's numbers).
BUILTIN_DEFAULTS: dict[str, int] = {
    "num_experts": 8,
    "top_k": 2,
    "hidden_dim": 4096,
    "expert_dim": 14336,
    "shared_expert_dim": 0,
}


@dataclass(frozen=True)
class Resolved:
    name: str
    value: int
    source: str  # one of SOURCES
    detail: str  # e.g. "model.config.intermediate_size", "experts.down_proj.shape[-1]"

    def __str__(self) -> str:
        return f"{self.value} ({self.detail})"


def read_config_field(config: Any, spec: FieldSpec) -> int | None:
    """Value of a field spec on a config (dotted paths, products of fields); None if any part is absent."""
    if isinstance(spec, tuple):
        values = [read_config_field(config, part) for part in spec]
        return None if any(v is None for v in values) else int(prod(values))
    node = config
    for part in spec.split("."):
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
        if node is None:
            return None
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return int(node)


def spec_name(spec: FieldSpec) -> str:
    return " * ".join(f"model.config.{p}" for p in spec) if isinstance(spec, tuple) else f"model.config.{spec}"


def resolve_dim(
    name: str,
    *,
    config: Any,
    config_fields: Sequence[FieldSpec],
    module_value: tuple[int, str] | None = None,
    overrides: Mapping[str, int] | None = None,
    fallbacks: Mapping[str, int] | None = None,
) -> tuple[Resolved, str | None]:
    """Resolve one dimension; returns it and a warning when the config contradicts the module shapes."""
    config_hit: tuple[int, str] | None = None
    if config is not None:
        for spec in config_fields:
            value = read_config_field(config, spec)
            if value is not None:
                config_hit = (value, spec_name(spec))
                break
    warning = None
    if config_hit and module_value and config_hit[0] != module_value[0]:
        warning = (
            f"{name}: {config_hit[1]} = {config_hit[0]} but the module says {module_value[0]} "
            f"({module_value[1]})"
        )
    if overrides and overrides.get(name) is not None:
        value = int(overrides[name])
        if module_value and value != module_value[0]:  # an override that contradicts the weights
            warning = f"{name}: user override = {value} but the module says {module_value[0]} ({module_value[1]})"
        return Resolved(name, value, "override", "user override"), warning
    if config_hit:
        return Resolved(name, config_hit[0], "config", config_hit[1]), warning
    if module_value:
        return Resolved(name, int(module_value[0]), "module", module_value[1]), warning
    if fallbacks and fallbacks.get(name) is not None:
        return Resolved(name, int(fallbacks[name]), "fallback", "user fallback"), warning
    return Resolved(name, BUILTIN_DEFAULTS[name], "default", "built-in default"), warning
