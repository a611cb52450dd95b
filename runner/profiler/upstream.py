"""The private torch and transformers internals the profiler relies on, each used from here only.

Upstream may move any of them in a release; tests/integration/test_upstream.py checks every one and names what changed.
(Hydra's internals, which only the runner app uses, are in runner/cli/hydra_internals.py.)
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

# -- transformers' release ------------------------------------------------------------------------------------------


def transformers_release() -> tuple[int, int]:
    """(major, minor) of the installed transformers: what a handler's versioned quirks are compared with."""
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


# -- torch.utils.flop_counter -------------------------------------------------------------------------------------


def raw_formula(formula: Callable) -> Callable:
    """Mark a FlopCounterMode formula as taking the op's tensors rather than their shapes (`_get_raw`): grouped
    matmuls and varlen attention read offsets' values."""
    formula._get_raw = True
    return formula


class _GlobalOnly:
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def unseen_by_dispatch_modes():
    """A context in which ops run below any active dispatch mode (FlopCounterMode): the profiler's own reductions
    inside its hooks (a transition count is a matmul) are not the model's FLOPs. Eager only: under torch.compile
    no FlopCounterMode is active (measure_flops runs compiled models eagerly)."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def without_module_tracker(counter: Any) -> Any:
    """Count into "Global" only. The profiler attributes FLOPs with its own hooks; FlopCounterMode's module tracker
    (`mod_tracker`) is not needed, and raises under no_grad when a submodule receives a view of a Parameter."""
    counter.mod_tracker = _GlobalOnly()
    return counter


# -- torch._dynamo / torch.compile ----------------------------------------------------------------------------------


def compiled_wrapper_type() -> type:
    """The class of `torch.compile(module)`: its `_orig_mod` is the module itself."""
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module `torch.compile(module)` wraps; any other module as it is."""
    return model._orig_mod if isinstance(model, compiled_wrapper_type()) else model


def hook_guards_skipped() -> bool:
    """Whether dynamo compiles without guards on nn.Module hooks (its default)."""
    return bool(torch._dynamo.config.skip_nnmodule_hook_guards)


def guard_hooks() -> None:
    """Make code compiled from now on guard on nn.Module hooks. Without them, compiled code is shared by every
    instance of a module class whatever its hooks: a model compiled before (or a twin of it) would run the profiled
    one without its hooks, silently counting nothing, and removing hooks would not stop them. With them, adding or
    removing hooks re-traces once. The guards only add checks (a process setting, left on)."""
    torch._dynamo.config.skip_nnmodule_hook_guards = False


def reset_compiled_code() -> None:
    torch._dynamo.reset()


def force_eager():
    """Compiled functions run as plain Python (torch >= 2.6 has set_stance; older: dynamo skips under the mode)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def mark_static(buffer: torch.Tensor) -> None:
    """Tell inductor a buffer keeps its address (cudagraphs stay on for graphs that update it in place)."""
    torch._dynamo.mark_static_address(buffer)


def has_compiled_code(model: nn.Module, blocks: list[nn.Module]) -> bool:
    """Whether dynamo holds compiled code for the module calls of this model (torch.compile(model), model.compile(),
    generate's compiled step): the frames it compiles are nn.Module's call wrappers and the models' forwards."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    except ImportError:  # pragma: no cover - without it, attach-after-compile is the user's to avoid
        return False
    codes = {nn.Module._call_impl.__code__, nn.Module._wrapped_call_impl.__code__, type(model).forward.__code__}
    codes |= {type(m).forward.__code__ for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    codes |= {type(block).forward.__code__ for block in blocks[:1]}
    return any(_debug_get_cache_entry_list(code) for code in codes)


# -- transformers ------------------------------------------------------------------------------------------------

# PreTrainedConfig attribute naming the experts implementation the model runs ("eager", "grouped_mm", a registered
# name; None: transformers' default). The profiler reads it and, for dynamic k, sets it (saved and restored).
EXPERTS_IMPLEMENTATION = "_experts_implementation"
# Flag of an experts module (transformers >= 5.2x) that makes the stock kernels mask the sentinel index
# (num_experts) instead of reading uninitialised memory; absent on older releases.
EXPERT_PARALLEL = "_is_expert_parallel"


def experts_implementation(config: Any) -> str | None:
    return getattr(config, EXPERTS_IMPLEMENTATION, None)


try:  # transformers >= 5: its dispatcher picks torch's grouped_mm kernel or its portable fallback
    from transformers.integrations.moe import _grouped_linear as grouped_linear
except ImportError:  # pragma: no cover - older layouts
    def grouped_linear(input, weight, offs, bias=None, is_transposed=False):
        out = torch._grouped_mm(input.to(weight.dtype), weight if is_transposed else weight.transpose(-2, -1), offs=offs)
        return out + bias if bias is not None else out


def experts_functions() -> dict | None:
    """transformers' registry of experts implementations (`experts_implementation=<name>`), None where absent."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:  # pragma: no cover
        return None
    return ALL_EXPERTS_FUNCTIONS


# -- accelerate (optional) ------------------------------------------------------------------------------------------
def execution_device(module: nn.Module) -> torch.device | None:
    """The device accelerate's hook (`_hf_hook`, set by dispatch_model / device_map) runs this module on, None
    without one. A module whose weights are offloaded (to the CPU or disk) keeps them on the meta device between
    calls; the hook moves them to this device for each forward."""
    hook = getattr(module, "_hf_hook", None)
    for one in getattr(hook, "hooks", (hook,)):  # a SequentialHook chains several
        device = getattr(one, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return None


def placement_hints(model: nn.Module) -> tuple[list[str], Any]:
    """What from_pretrained hands accelerate when it places a model: the module classes never split over devices
    (`_no_split_modules`: a decoder layer) and the forward keywords never moved between them
    (`_skip_keys_device_placement`: the KV cache, kept where each layer writes it)."""
    return list(getattr(model, "_no_split_modules", None) or []), getattr(model, "_skip_keys_device_placement", None)
