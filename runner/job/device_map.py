"""A model spread over several devices (device.device_map, accelerate); the memory each GPU used is
runner/results/gpu_memory.py.

Pretrained weights: from_pretrained(device_map=..., max_memory=..., offload_folder=...) places them as it loads.
Random weights: built on the CPU first (seeded: equal to a `device=cpu` build of the same dtype and seed), then
placed by the same rules (accelerate's infer_auto_device_map, balanced like from_pretrained's) and dispatched. Modules
mapped to the CPU or disk are offloaded: their weights wait on the meta device and accelerate's hooks bring them to the
first GPU for each forward, so a model split between a GPU and the CPU computes on the GPU.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError, DeviceError, one_line
from ..config.schema import DeviceConfig

INSTALL = "pip install accelerate"  # or the project's extra: pip install 'moe-profiler[multi]'


def require_accelerate() -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise DeviceError(f"device.device_map needs accelerate, which is not installed: {INSTALL} "
                          "(or use device=cuda / device=cpu)") from None


def max_memory(device: DeviceConfig) -> dict[Any, Any] | None:
    """device.max_memory with GPU indices as ints (accelerate's keys); sizes as given ('70GiB') or bytes."""
    if not device.max_memory:
        return None
    return {int(k) if str(k).isdigit() else str(k): v for k, v in device.max_memory.items()}


def pretrained_kwargs(device: DeviceConfig) -> dict[str, Any]:
    require_accelerate()
    kwargs: dict[str, Any] = dict(device_map=device.device_map)
    if device.max_memory:
        kwargs["max_memory"] = max_memory(device)
    if device.offload_folder:
        kwargs["offload_folder"] = device.offload_folder
    return kwargs


def spread(model, device: DeviceConfig, dtype):
    """Place a model built in memory over the devices as from_pretrained would, and dispatch it."""
    require_accelerate()
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    from ..profiler.upstream import placement_hints

    no_split, skip_keys = placement_hints(model)
    limits = max_memory(device)
    if device.device_map != "sequential":
        limits = get_balanced_memory(model, max_memory=limits, no_split_module_classes=no_split, dtype=dtype,
                                     low_zero=device.device_map == "balanced_low_0")
    device_map = infer_auto_device_map(model, max_memory=limits, no_split_module_classes=no_split, dtype=dtype)
    offload_dir = None
    if set(device_map.values()) == {"disk"}:
        raise ConfigError(f"device.max_memory={device.max_memory}: not even the first module fits it (all would go "
                          "to disk); allow more memory")
    if "disk" in device_map.values():
        if not device.offload_folder:
            raise ConfigError("device.offload_folder: the model does not fit the memory device.max_memory allows, "
                              "so some modules go to disk; set device.offload_folder=<dir> or allow more memory")
        offload_dir = _fresh_folder(device.offload_folder)
    try:
        return dispatch_model(model, device_map, offload_dir=offload_dir, skip_keys=skip_keys)  # sets hf_device_map
    except (ValueError, RuntimeError) as exc:
        raise DeviceError(f"device.device_map={device.device_map}: accelerate could not place the model: "
                          f"{one_line(exc, 300)}") from None


def _fresh_folder(parent: str) -> str:
    """A new directory under `parent` for this model's offloaded weights, removed at exit: accelerate reuses any
    index.json it finds in an offload directory, so a shared one could hand a model another model's weights."""
    import atexit
    import shutil
    import tempfile

    from ..files import user_directory

    folder = tempfile.mkdtemp(prefix="offload-", dir=user_directory(parent, "device.offload_folder"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def describe(model) -> str | None:
    """The devices of a model spread over several ('2 x NVIDIA H200 + cpu offload'), None on one device."""
    mapped = getattr(model, "hf_device_map", None)
    places = list(dict.fromkeys(mapped.values())) if mapped else []
    if len(places) < 2:
        return None
    import torch

    gpus = [torch.cuda.get_device_name(d) for d in places if d not in ("cpu", "disk")]
    names = [f"{gpus.count(name)} x {name}" for name in dict.fromkeys(gpus)]
    offloaded = [d for d in places if d == "disk" or (d == "cpu" and gpus)]  # the CPU computes only without GPUs
    return " + ".join(names + ["cpu"] * ("cpu" in places and not gpus) + [f"{d} offload" for d in offloaded])
