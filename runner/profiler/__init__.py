"""The profiler library: attach to a transformers MoE model, record its routing on the device, count FLOPs, change
top-k or apply a dynamic-k selector, and evaluate quality against the model's own routing. Imports no Hydra."""
from .attach import ProfilerError
from .core import MOEProfiler
from .scan import NoMoEError

__all__ = ["MOEProfiler", "ProfilerError", "NoMoEError"]
