"""Load a model + tokenizer as a model config says: pretrained | random | meta; a one-entry process cache.

Sweeps that run jobs in one process (basic launcher) and differ only in top-k / selector / dataset reuse the loaded
model: the cache is keyed by the model and device configs (and the seed, for random weights). Each job must detach its
profiler before the next one starts, so every job sees the pristine model.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from . import device_map as dispatch, hub
from ..errors import ConfigError, DeviceError, ModelUnavailable, one_line
from ..config.schema import DeviceConfig, ModelConfig, Weights
from ..config.identity import canonical_json

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any  # None for weights=meta
    device: Any  # torch.device of the inputs
    device_name: str
    dtype: str
    load_s: float
    reused: bool
    tokenizer_name: str
    experts_implementation: str | None


_CACHE: dict[str, Loaded] = {}


def _plain(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def cache_key(model: ModelConfig, device: DeviceConfig, seed: int) -> str:
    payload = dict(model=_plain(asdict(model)), device=asdict(device), seed=seed if model.weights is Weights.random else None)
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def clear_cache() -> None:
    _CACHE.clear()


def resolve_device(device: DeviceConfig, weights: Weights):
    """The torch device the inputs (and in-memory builds) go to; DeviceError when CUDA is asked for but absent."""
    import torch

    if weights is Weights.meta:
        return torch.device("meta")
    if device.name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device={device.name} ({device.device}) requested but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); use device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{device.device} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def resolve_dtype(device: DeviceConfig, weights: Weights, target, checkpoint: str | None = None):
    """The dtype to build or load in. weights=meta: the checkpoint's own (`torch_dtype` / `dtype` in model.config),
    since the bytes per token of a meta job are what the checkpoint reads (device.dtype where it states none)."""
    import torch

    if weights is Weights.meta and checkpoint:
        declared = getattr(torch, str(checkpoint).removeprefix("torch."), None)
        if not isinstance(declared, torch.dtype):
            raise ConfigError(f"model.config.torch_dtype: {checkpoint!r} is not a torch dtype (bfloat16, float16, "
                              "float32, float8_e4m3fn, ...)")
        return declared
    if device.dtype == "auto":
        if weights is Weights.pretrained:
            return "auto"
        return torch.bfloat16 if target.type == "cuda" else torch.float32
    return getattr(torch, device.dtype)


def load(model_cfg: ModelConfig, device_cfg: DeviceConfig, seed: int) -> Loaded:
    import torch

    key = cache_key(model_cfg, device_cfg, seed)
    if key in _CACHE:
        hit = _CACHE[key]
        return Loaded(**{**hit.__dict__, "load_s": 0.0, "reused": True})
    _CACHE.clear()  # one model at a time: free the previous one before loading the next
    _free_accelerator_memory()
    start = time.perf_counter()
    target = resolve_device(device_cfg, model_cfg.weights)
    declared = dict(model_cfg.config or {})
    dtype = resolve_dtype(device_cfg, model_cfg.weights, target, declared.get("torch_dtype") or declared.get("dtype"))
    if model_cfg.weights is Weights.pretrained:
        model = _load_pretrained(model_cfg, device_cfg, target, dtype)
    elif device_cfg.device_map is not None and model_cfg.weights is Weights.random:
        # built on the CPU (the weights of a device=cpu build), then placed over the devices
        model = dispatch.spread(_build(model_cfg, torch.device("cpu"), dtype, seed), device_cfg, dtype)
    else:
        model = _build(model_cfg, target, dtype, seed)
    model.eval()
    tokenizer, tokenizer_name = (None, "none") if model_cfg.weights is Weights.meta else load_tokenizer(model_cfg, model)
    from ..profiler.attach import input_device
    from ..profiler.upstream import experts_implementation

    first = next(model.parameters(), None)
    device = first.device if first is not None else target
    if model_cfg.weights is not Weights.meta and model.get_input_embeddings() is not None:
        device = input_device(model)  # a split model's first device

    loaded = Loaded(
        model=model, tokenizer=tokenizer, device=device, device_name=dispatch.describe(model) or _device_name(device),
        dtype=str(first.dtype).removeprefix("torch.") if first is not None else str(dtype),
        load_s=time.perf_counter() - start, reused=False, tokenizer_name=tokenizer_name,
        experts_implementation=experts_implementation(model.config),
    )
    _CACHE[key] = loaded
    return loaded


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return str(device)


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def _impl_kwargs(model_cfg: ModelConfig) -> dict[str, Any]:
    return {"experts_implementation": model_cfg.experts_implementation} if model_cfg.experts_implementation else {}


def _build(model_cfg: ModelConfig, target, dtype, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..profiler.upstream import EXPERTS_IMPLEMENTATION

    try:
        config = AutoConfig.for_model(model_cfg.model_type, **dict(model_cfg.config))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"model.model_type / model.config: {one_line(exc, None)}") from None
    if model_cfg.experts_implementation:
        setattr(config, EXPERTS_IMPLEMENTATION, model_cfg.experts_implementation)
    torch.manual_seed(seed)
    try:
        with torch.device(target):
            return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code)
    except (ValueError, AssertionError, IndexError) as exc:  # an inconsistent model.config (e.g. a pad id >= vocab)
        raise ConfigError(f"model {model_cfg.name!r}: cannot build a causal LM for model_type "
                          f"{model_cfg.model_type!r}: {one_line(exc, 300)}") from None


def _is_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


def _from_pretrained(fn, name: str, what: str, model_cfg: ModelConfig, **kwargs):
    """Local directory, else the local HF cache, else (when online) the hub; one clear ModelUnavailable otherwise."""
    kwargs = dict(revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code, **kwargs)
    if _is_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelUnavailable(f"model {model_cfg.name!r}: {what} directory {name} does not exist")
        try:
            return fn(str(path), **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"model {model_cfg.name!r}: cannot load {what} from {name}: {one_line(exc, 300)}") from None
    try:
        return fn(name, local_files_only=True, **kwargs)
    except OSError as exc:
        cached_error = exc
    if hub.reachable():  # asked once per process: an unreachable hub costs no retries, in no later job either
        try:
            return fn(name, **kwargs)
        except OSError as exc:
            raise ModelUnavailable(f"model {model_cfg.name!r}: cannot load {what} {name!r} from the hub: "
                                   f"{one_line(exc, 300)}") from None
    log.debug("from_pretrained(%s, local_files_only=True) failed: %s", name, cached_error)
    raise ModelUnavailable(
        f"model {model_cfg.name!r}: {what} {name!r} is not in the local Hugging Face cache and {hub.why_offline()}; "
        f"download it on a machine with network (`hf download {name}`) into this HF cache "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}), point model.hf_id at a local directory, or use "
        "model.weights=random (random init, full size) or model.weights=meta (analytic FLOPs only)")


def _load_pretrained(model_cfg: ModelConfig, device_cfg: DeviceConfig, target, dtype):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(dtype=dtype, **_impl_kwargs(model_cfg))
    if device_cfg.device_map:
        kwargs.update(dispatch.pretrained_kwargs(device_cfg))
    elif target.type != "cpu":
        kwargs["device_map"] = {"": str(target)}
    try:
        return _from_pretrained(AutoModelForCausalLM.from_pretrained, model_cfg.hf_id, "pretrained weights", model_cfg,
                                **kwargs)
    except ImportError as exc:  # device_map="auto" without accelerate, missing optional kernels
        raise ModelUnavailable(f"model {model_cfg.name!r}: {one_line(exc, 300)}") from None


def load_tokenizer(model_cfg: ModelConfig, model) -> tuple[Any, str]:
    from ..config.schema import BYTE_VOCAB_SIZE
    from .tokenizer import byte_tokenizer

    name = model_cfg.tokenizer
    if name is None:
        name = model_cfg.hf_id if model_cfg.weights is Weights.pretrained else "byte"
    if name == "byte":
        vocab = getattr(model.config.get_text_config(), "vocab_size", None)
        if vocab is not None and vocab < BYTE_VOCAB_SIZE:
            raise ConfigError(f"model.config.vocab_size={vocab} is smaller than the byte tokenizer's "
                              f"{BYTE_VOCAB_SIZE} ids; use vocab_size >= {BYTE_VOCAB_SIZE}")
        return byte_tokenizer(), "byte"
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer", model_cfg)
    return tok, name
