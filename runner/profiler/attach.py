"""The profiler's hooks on a model: on and off, phases, and what each hook does with one call's routing.

Hooks are added, never modules replaced. Each router hook hands the call's (logits, selected indices, combine
weights) to the recorder and, with a dynamic-k selector set, returns the router's output with dropped slots. Python
flags (`live`, `enabled`) are read, never written, inside a hook: compiled code guards on them.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import lookahead, upstream, vocab
from .phases import PREFILL
from .metrics import router_probs
from .scan import MoELayer, read_live_top_k


class ProfilerError(ValueError):
    """A request the model or the profiler cannot honour; the message says why and what to do."""


# (layer, logits, index, weights) -> (index, weights) with dropped slots: a dynamic-k selector, set by routing.py
Select = Callable[[MoELayer, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Attachment:
    def __init__(self, model: nn.Module, layers: list[MoELayer], recorder, timer, model_type: str | None):
        self.model, self.layers, self.recorder, self.timer, self.model_type = model, layers, recorder, timer, model_type
        self.handles: list[Any] = []
        self.saved: list[tuple[Any, str, Any]] = []  # (object, attribute, original value), undone by detach()
        self.live = False  # hooks attached
        self.enabled = True  # False while paused (a reference pass)
        self.phase = PREFILL
        self.select: Select | None = None
        self.trace = None  # a RoutingTrace (trace.py) while tracing

    # -- on / off ----------------------------------------------------------------------------------
    def attach(self) -> None:
        """Add the hooks. torch.compile traces hooks that exist when it compiles: attach before compiling. Where
        compiled code already exists, dynamo's caches are reset (with a warning) so the next call re-traces with
        the hooks instead of silently running without them."""
        if self.handles:
            return
        self.live = True
        for layer in self.layers:
            if layer.router is not None and layer.router_output != "none":
                if layer.router_output == "logits" and layer.experts_take_routing:
                    slot: list = [None]  # the router's logits, consumed by the experts' pre-hook of the same call
                    self.handles.append(layer.router.register_forward_hook(self._router_hook(layer, slot)))
                    self.handles.append(layer.experts.register_forward_pre_hook(self._experts_hook(layer, slot)))
                else:
                    self.handles.append(layer.router.register_forward_hook(self._router_hook(layer, None)))
            if self.timer is not None:
                self.handles.append(layer.block.register_forward_pre_hook(self._timer_start(layer)))
                self.handles.append(layer.block.register_forward_hook(self._timer_stop(layer)))
        if self.recorder is not None and self.recorder.analyses.vocab:  # the token ids the routers do not see
            self.handles.append(self.model.register_forward_pre_hook(self._capture_ids, with_kwargs=True))
            self.handles.append(self.model.register_forward_hook(self._release_ids, always_call=True))
        if upstream.hook_guards_skipped():  # code compiled so far ignores hooks added or removed
            if upstream.has_compiled_code(self.model, [layer.block for layer in self.layers]):
                warnings.warn(
                    "MOEProfiler attached to a model that already has torch.compile'd code, compiled without guards on "
                    "hooks (it would run without the profiler's): dynamo's caches were reset, every compiled function "
                    "recompiles on its next call. Attach the profiler before compiling to avoid this.", stacklevel=3)
                upstream.reset_compiled_code()
            upstream.guard_hooks()

    def detach(self) -> None:
        """Remove every hook and restore every attribute changed (top-k, sentinel flags): the model is as before.
        Compiled code traced with the hooks guards on `live`, so it re-traces without them on its next call."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.live = False
        for obj, attr, value in reversed(self.saved):
            setattr(obj, attr, value)
        self.saved.clear()
        self.select = None

    def save_once(self, obj: Any, attr: str) -> None:
        """Remember an attribute's original value before the profiler first changes it."""
        if not any(o is obj and a == attr for o, a, _ in self.saved):
            self.saved.append((obj, attr, getattr(obj, attr)))

    # -- phases and pauses -------------------------------------------------------------------------
    def set_phase(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ProfilerError(f"a phase is a non-empty name, got {name!r}")
        if self.recorder is not None:
            self.recorder.set_phase(name)
        if self.trace is not None:
            self.trace.set_phase(name)
        self.phase = name

    @contextmanager
    def paused(self) -> Iterator[None]:
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    @contextmanager
    def default_routing(self) -> Iterator[None]:
        current = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in self.saved]
        for obj, attr, original in self.saved:
            setattr(obj, attr, original)
        try:
            with self.paused():
                yield
        finally:
            for obj, attr, value in current:
                setattr(obj, attr, value)

    # -- hooks -------------------------------------------------------------------------------------
    def _record(self, position: int, logits: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> None:
        with upstream.unseen_by_dispatch_modes():  # the profiler's own ops are not the model's FLOPs
            if self.recorder is not None:
                self.recorder.record(position, logits, index, weights)
            if self.trace is not None:
                self.trace.add(position, logits, index, weights)

    def _router_hook(self, layer: MoELayer, slot: list | None):
        handler, position = layer.handler, layer.position
        positions: list[tuple[int, int, int]] = []  # (logits, weights, index) slots, found on the first eager call
        following = self._predicted_layer(layer)

        def hook(module, args, output):
            if not (self.live and self.enabled):  # Python flags: compiled code guards on them
                return None
            if following is not None and args and isinstance(args[0], torch.Tensor):
                self._predict(layer, following, args[0])
            if layer.router_output == "triple":
                if torch.compiler.is_compiling():  # no Python state written while tracing: found again (free)
                    i_logits, i_weights, i_index = self._routing_positions(module, layer, output)
                else:
                    if not positions:
                        positions.append(self._routing_positions(module, layer, output))
                    i_logits, i_weights, i_index = positions[0]
                logits, weights, index = output[i_logits], output[i_weights], output[i_index]
                if self.select is None:
                    self._record(position, logits, index, weights)
                    return None
                index, weights = self.select(layer, logits, index, weights)
                self._record(position, logits, index, weights)
                output = list(output)
                output[i_index], output[i_weights] = index, weights
                return tuple(output)
            logits = output if layer.logits_index is None else output[layer.logits_index]
            if slot is not None:  # indices arrive at the experts' input, in the same block call
                slot[0] = logits
                return None
            probs = router_probs(logits.reshape(-1, logits.shape[-1]), handler.scoring)
            weights, index = probs.topk(read_live_top_k(layer) or 1, dim=-1)
            self._record(position, logits, index, weights)
            return None

        return hook

    def _predicted_layer(self, layer: MoELayer) -> MoELayer | None:
        """With the lookahead analysis: the next MoE layer, when its router can be called on this layer's router input
        (a router module whose weights are here, not offloaded to the meta device)."""
        if self.recorder is None or not self.recorder.analyses.lookahead or layer.position + 1 >= len(self.layers):
            return None
        following = self.layers[layer.position + 1]
        router = following.router
        if router is None or following.router_output == "none" or any(p.is_meta for p in router.parameters()):
            return None
        return following

    def _predict(self, layer: MoELayer, following: MoELayer, hidden: torch.Tensor) -> None:
        """The experts `following`'s router picks from `layer`'s router input, kept for `following`'s call: its own
        top-k where the router selects (a triple), else the live top-k of its scores. `forward` is called directly, so
        no hook (the profiler's own) fires, and the profiler's dispatch modes do not count it as the model's work."""
        with upstream.unseen_by_dispatch_modes(), torch.no_grad():
            output = following.router.forward(hidden.to(layer_device(following)))
            if following.router_output == "triple":
                index = output[self._routing_positions(following.router, following, output)[2]]
            else:
                logits = output if following.logits_index is None else output[following.logits_index]
                probs = router_probs(logits.reshape(-1, logits.shape[-1]), following.handler.scoring)
                index = probs.topk(read_live_top_k(following) or 1, dim=-1).indices
            lookahead.keep(self.recorder, layer.position, index)

    def _capture_ids(self, module, args, kwargs):
        """Copy the forward's input ids (keyword or first positional) for its router calls (vocab.py); a forward given
        inputs_embeds has none to pair."""
        if self.live and self.enabled:
            ids = kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)
            usable = isinstance(ids, torch.Tensor) and not ids.is_floating_point()
            vocab.capture(self.recorder.groups, ids if usable else None)
        return None

    def _release_ids(self, module, args, output):
        """After the forward: router calls outside a forward of the top model pair nothing."""
        if self.live:
            vocab.capture(self.recorder.groups, None)
        return None

    def _routing_positions(self, module: nn.Module, layer: MoELayer, output: Any) -> tuple[int, int, int]:
        """Where the logits, weights and indices sit in a router's output: by kind, not by order, since
        releases differ ((logits, w, idx) vs (idx, w, logits)). Fixed per router class, so found once."""
        i_index = next((i for i, t in enumerate(output[:3]) if isinstance(t, torch.Tensor)
                        and not t.is_floating_point()), None)
        if i_index is None or len(output) < 3:
            raise ProfilerError(
                f"{type(module).__name__} returned {len(output)} outputs without (logits, weights, indices): "
                f"this transformers release routes {self.model_type} in a way the profiler does not know")
        floats = [i for i in range(3) if i != i_index]
        i_weights = next((i for i in floats if output[i].shape[-1] == output[i_index].shape[-1]
                          and i != layer.logits_index), floats[-1])
        i_logits = next(i for i in floats if i != i_weights)
        return i_logits, i_weights, i_index

    def _experts_hook(self, layer: MoELayer, slot: list):
        position = layer.position

        def hook(module, args):
            logits, slot[0] = slot[0], None  # consumed: no reference outlives the block call
            if logits is not None and self.live and self.enabled:
                hidden, index, weights = args[:3]
                self._record(position, logits, index, weights)
            return None

        return hook

    # per-block timing is eager only: compiled code fuses across blocks, and events/clocks would break the graph
    def _timer_start(self, layer: MoELayer):
        def hook(module, args):
            if torch.compiler.is_compiling():
                return
            if self.live and self.enabled and args and isinstance(args[0], torch.Tensor):
                self.timer.start(layer.position, args[0].device, self.phase)

        return hook

    def _timer_stop(self, layer: MoELayer):
        def hook(module, args, output):
            if torch.compiler.is_compiling():
                return
            if self.live and self.enabled:
                self.timer.stop(layer.position)

        return hook


def layer_device(layer: MoELayer) -> torch.device:
    """Where a layer's routing runs: its router's (or block's) first parameter, or, where that is on the meta device
    because accelerate offloads the weights (device_map with cpu / disk), the device its hook runs the module on."""
    for module in (layer.router, layer.block):
        if module is not None:
            for param in module.parameters():
                if param.device.type != "meta":
                    return param.device
                hooked = (upstream.execution_device(sub) for sub in module.modules())
                return next((device for device in hooked if device is not None), param.device)
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """Where a model takes its inputs: for a model accelerate dispatched over devices, the device its first hooked
    module (the embeddings) runs on, whatever holds its weights between calls; else its first parameter's."""
    for module in model.modules():
        device = upstream.execution_device(module)
        if device is not None:
            return device
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
