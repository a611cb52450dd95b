"""model_type -> Handler. Look up with `get_handler(config.model_type)`; unknown types get GENERIC."""
from __future__ import annotations

from . import deepseek, granite, mixtral_like, qwen, special
from .base import GENERIC, Handler, Registry

REGISTRY = Registry()
for _family in (mixtral_like, qwen, deepseek, granite, special):
    for _entry in _family.ENTRIES:
        REGISTRY.register(_entry)


def get_handler(model_type: str | None) -> Handler:
    return REGISTRY.get(model_type)


def supported_model_types() -> list[str]:
    return sorted(REGISTRY.handlers)


__all__ = ["GENERIC", "REGISTRY", "get_handler", "supported_model_types"]
