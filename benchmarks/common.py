"""What the benchmark scripts share, public: the OLMoE shapes they build, a random-weight model built on the device,
wall time with the device synchronised around (never inside) the timed call, JSON-safe values and atomic writes.
Importing it runs nothing (torch is imported, no model is built)."""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

OLMOE_1B_7B = dict(
    hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
    num_experts=64, num_experts_per_tok=8, vocab_size=50304, norm_topk_prob=False, max_position_embeddings=4096,
)
TINY_OLMOE = dict(
    hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    num_experts=8, num_experts_per_tok=2, vocab_size=256, norm_topk_prob=False, max_position_embeddings=4096,
    pad_token_id=1, bos_token_id=None, eos_token_id=2,
)

# mode presets; any option given on the command line wins


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # every GPU: a model split over several (multi_device.py) ends on its last
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def timed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of fn() in ms, the device synchronised before and after (never inside)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value


def build_model(config_kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Random-weight OlmoeForCausalLM built directly on `device`, eval mode, grouped_mm experts."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(**config_kwargs)
    torch.manual_seed(seed)
    with torch.device(device):
        model = OlmoeForCausalLM._from_config(config, dtype=dtype, experts_implementation="grouped_mm")
    model.eval()
    with torch.no_grad():  # never leave uninitialised (torch.empty) memory in a timed model
        for p in model.parameters():
            if not torch.isfinite(p).all():
                p.normal_(0.0, 0.02)
    return model


def set_experts_implementation(model, name: str) -> None:
    if model.config._experts_implementation != name:
        model.set_experts_implementation(name)
    assert model.config._experts_implementation == name, model.config._experts_implementation
