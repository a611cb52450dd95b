"""Architecture knowledge for Mixture-of-Experts models in transformers, as data."""
from .base import DIMENSIONS, GENERIC, Handler
from .dims import Resolved, resolve_dim
from .registry import REGISTRY, get_handler, supported_model_types

__all__ = ["DIMENSIONS", "GENERIC", "Handler", "REGISTRY", "Resolved", "get_handler", "resolve_dim", "supported_model_types"]
