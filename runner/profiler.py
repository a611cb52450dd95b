"""MOEProfiler: attach to any transformers MoE model with hooks (no module replacement) and report
routing, exact FLOPs, latency and memory per MoE layer."""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from handlers.base import DIMENSIONS

from .flops import count_flops
from .latency import LayerTimer
from .metrics import RoutingRecorder, load_balance, router_probs
from .scan import MoELayer, read_live_top_k, top_k_owner, scan_model, text_config, write_live_top_k


class ProfilerError(ValueError):
    """A request the model or the profiler cannot honour; the message says why and what to do."""


class MOEProfiler:
    """Profile the MoE layers of `model`.

    overrides / fallbacks: dimension values placed above / below `model.config` in the priority chain
    (keys: num_experts, top_k, hidden_dim, expert_dim, shared_expert_dim).
    selector: a dynamic-k policy name (see runner.selectors) or a function probs[T, E] -> keep mask [T, k_max].
    latency: time each MoE block (CUDA events on GPU); adds hooks, off by default.
    phases: the labels `set_phase()` switches between without recompiling compiled code (others can be added later,
    at the cost of one re-trace).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        overrides: Mapping[str, int] | None = None,
        fallbacks: Mapping[str, int] | None = None,
        selector: str | Callable | None = None,
        selector_params: Mapping[str, Any] | None = None,
        renormalize: str | bool = "auto",
        metrics: bool = True,
        latency: bool = False,
        warmup: int = 1,
        buffer_tokens: int | None = None,
        phases: Sequence[str] = ("prefill", "decode"),
        verbose: bool = True,
    ):
        compiled_wrapper = isinstance(model, _optimized_module_type())
        if compiled_wrapper:  # torch.compile(model): profile (and hook) the module it wraps
            model = model._orig_mod
        self.model = model
        self.config = text_config(model)
        self.model_type = getattr(self.config, "model_type", None)
        self.layers: list[MoELayer] = scan_model(model, overrides=overrides, fallbacks=fallbacks)
        self.handler = self.layers[0].handler
        for layer in self.layers:
            for message in layer.warnings:
                warnings.warn(f"layer {layer.layer_id}: {message}", stacklevel=2)
        self._handles: list[Any] = []
        self._saved: list[tuple[Any, str, Any]] = []  # (object, attribute, original value), undone by detach()
        self._measured: dict[str, list[int]] = {}  # phase -> measured FLOPs per layer
        self._measured_taken = False
        self._phase = "prefill"
        self._enabled = True
        self._selector: Callable | None = None
        self.selector_name: str | None = None
        self.selector_params: dict[str, Any] = {}
        self.renormalize = renormalize
        observable = self.layers[0].router_output != "none"
        self.recorder = (
            RoutingRecorder(
                len(self.layers), router_width=[l.router_width for l in self.layers],
                num_experts=[l.num_experts for l in self.layers], scoring=self.handler.scoring, capacity=buffer_tokens,
                devices=[_layer_device(l) for l in self.layers], phases=tuple(phases),
            )
            if metrics and observable else None
        )
        self.timer = LayerTimer(len(self.layers), warmup=warmup) if latency else None
        self.attach()
        if selector is not None:
            self.set_selector(selector, **dict(selector_params or {}))
        if verbose:
            print(self.scan_report())

    # -- attach / detach ---------------------------------------------------------------------------
    def attach(self) -> "MOEProfiler":
        """Add the hooks. torch.compile traces hooks that exist when it compiles: attach before compiling. Where
        compiled code already exists, dynamo's caches are reset (with a warning) so the next call re-traces with
        the hooks instead of silently running without them."""
        if self._handles:
            return self
        self._live = True
        for layer in self.layers:
            if layer.router is not None and layer.router_output != "none":
                if layer.router_output == "logits" and layer.experts_take_routing:
                    slot: list = [None]  # the router's logits, consumed by the experts' pre-hook of the same call
                    self._handles.append(layer.router.register_forward_hook(self._router_hook(layer, slot)))
                    self._handles.append(layer.experts.register_forward_pre_hook(self._experts_hook(layer, slot)))
                else:
                    self._handles.append(layer.router.register_forward_hook(self._router_hook(layer, None)))
            if self.timer is not None:
                self._handles.append(layer.block.register_forward_pre_hook(self._timer_start(layer)))
                self._handles.append(layer.block.register_forward_hook(self._timer_stop(layer)))
        if torch._dynamo.config.skip_nnmodule_hook_guards:  # code compiled so far ignores hooks added or removed
            if _has_compiled_code(self.model, self.layers):
                warnings.warn(
                    "MOEProfiler attached to a model that already has torch.compile'd code, compiled without guards on "
                    "hooks (it would run without the profiler's): dynamo's caches were reset, every compiled function "
                    "recompiles on its next call. Attach the profiler before compiling to avoid this.", stacklevel=2)
                torch._dynamo.reset()
            _guard_hooks()
        self.reset_memory_peaks()
        return self

    def detach(self) -> None:
        """Remove every hook and restore every attribute changed (top-k, sentinel flags): the model is as before.

        Compiled code traced with the hooks guards on `_live`, so it re-traces without them on its next call."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._live = False
        for obj, attr, value in reversed(self._saved):
            setattr(obj, attr, value)
        self._saved.clear()
        self._selector = None
        self.selector_name = None

    def __enter__(self) -> "MOEProfiler":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _save_once(self, obj: Any, attr: str) -> None:
        if not any(o is obj and a == attr for o, a, _ in self._saved):
            self._saved.append((obj, attr, getattr(obj, attr)))

    # -- phases ------------------------------------------------------------------------------------
    @property
    def current_phase(self) -> str:
        return self._phase

    def set_phase(self, name: str) -> None:
        """Label what is recorded from now on ("prefill" by default, "decode", or any name): layers_df() gives one
        row per (phase, layer). "prefill" and "decode" are preallocated: switching between them is a device-side
        fill, so compiled code does not recompile; a new name reallocates the accumulators (one re-trace)."""
        if not isinstance(name, str) or not name:
            raise ProfilerError(f"a phase is a non-empty name, got {name!r}")
        if self.recorder is not None:
            self.recorder.set_phase(name)
        self._phase = name

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """`with profiler.phase("decode"): ...` records under that label, then restores the previous one."""
        previous = self._phase
        self.set_phase(name)
        try:
            yield
        finally:
            self.set_phase(previous)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run the model without recording or selecting (e.g. a reference pass). Compiled code guards on the flag:
        the first paused call (and the first after) re-traces once, never runs stale hooks."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    @contextmanager
    def default_routing(self) -> Iterator[None]:
        """Run the model as it was before the profiler changed anything (original top-k, no selector, nothing
        recorded) — the reference for quality comparisons. Changes made through the profiler come back after."""
        current = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in self._saved]
        for obj, attr, original in self._saved:
            setattr(obj, attr, original)
        try:
            with self.paused():
                yield
        finally:
            for obj, attr, value in current:
                setattr(obj, attr, value)

    # -- hooks -------------------------------------------------------------------------------------
    def _router_hook(self, layer: MoELayer, slot: list | None):
        handler, position = layer.handler, layer.position
        positions: list[tuple[int, int, int]] = []  # (logits, weights, index) slots, found on the first eager call

        def hook(module, args, output):
            if not (self._live and self._enabled):  # Python flags: compiled code guards on them
                return None
            if layer.router_output == "triple":
                if torch.compiler.is_compiling():  # no Python state written while tracing: found again (free)
                    i_logits, i_weights, i_index = self._routing_positions(module, layer, output)
                else:
                    if not positions:
                        positions.append(self._routing_positions(module, layer, output))
                    i_logits, i_weights, i_index = positions[0]
                logits, weights, index = output[i_logits], output[i_weights], output[i_index]
                if self._selector is None:
                    self._record(position, logits, index, weights)
                    return None
                index, weights = self._select(layer, logits, index, weights)
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
            if logits is not None and self._live and self._enabled:
                hidden, index, weights = args[:3]
                self._record(position, logits, index, weights)
            return None

        return hook

    # per-block timing is eager only: compiled code fuses across blocks, and events/clocks would break the graph
    def _timer_start(self, layer: MoELayer):
        def hook(module, args):
            if torch.compiler.is_compiling():
                return
            if self._live and self._enabled and args and isinstance(args[0], torch.Tensor):
                self.timer.start(layer.position, args[0].device)

        return hook

    def _timer_stop(self, layer: MoELayer):
        def hook(module, args, output):
            if torch.compiler.is_compiling():
                return
            if self._live and self._enabled:
                self.timer.stop(layer.position)

        return hook

    def _record(self, position: int, logits: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> None:
        if self.recorder is not None:
            self.recorder.record(position, logits, index, weights)

    # -- top-k and selectors -----------------------------------------------------------------------
    def set_top_k(self, k: int) -> None:
        """Change the routers' real top-k (compute changes with it); undone by detach()."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ProfilerError(f"top-k must be an integer, got {k!r}")
        k = int(k)
        for layer in self.layers:
            if not layer.handler.top_k_settable:
                raise ProfilerError(f"{self.model_type}: top-k cannot change at run time ({layer.handler.note})")
            if not 1 <= k <= layer.num_experts:
                raise ProfilerError(
                    f"top-k must be between 1 and the number of experts ({layer.num_experts}) of layer "
                    f"{layer.layer_id}, got {k}"
                )
        if self.handler.group_limited:
            groups, keep = getattr(self.config, "n_group", None), getattr(self.config, "topk_group", None)
            if groups and keep and k > keep * self.layers[0].num_experts // groups:
                warnings.warn(
                    f"top-k {k} exceeds the {keep} of {groups} expert groups this router allows "
                    f"({keep * self.layers[0].num_experts // groups} experts): it will pick experts outside them",
                    stacklevel=2,
                )
        for layer in self.layers:
            owner_name, _, attr = layer.top_k_attr.partition(".")
            self._save_once(top_k_owner(layer, owner_name), attr)
            write_live_top_k(layer, k)

    @property
    def top_k(self) -> int | None:
        return read_live_top_k(self.layers[0])

    def set_selector(self, selector: str | Callable, *, fast_skip: bool = True, **params: Any) -> None:
        """Per-token dynamic k: the routers propose k_max candidates, `selector` keeps a prefix of them and
        dropped slots get the sentinel index (num_experts) and weight 0, so their experts are not computed.

        fast_skip: under transformers' `grouped_mm`, run the experts through runner.experts' forward-only variant
        (the same computation with one sentinel mask instead of training-time masks)."""
        from . import experts, selectors

        experts.register()

        for layer in self.layers:
            if not layer.handler.can_skip:
                raise ProfilerError(f"{self.model_type} cannot skip experts per token: {layer.handler.note}")
        use_fast = self._skip_implementation(fast_skip)
        name = selector if isinstance(selector, str) else getattr(selector, "__name__", "custom")
        function = selectors.get_selector(selector)
        k_max = int(params.pop("k_max", None) or self.top_k or self.layers[0].dims["top_k"].value)
        if isinstance(selector, str):
            selectors.validate_params(selector, {"k_max": k_max, **params}, self.layers[0].num_experts)
        self.set_top_k(k_max)
        for layer in self.layers:
            if hasattr(layer.experts, "_is_expert_parallel"):  # transformers >= 5.2x: sentinel handling is opt-in
                self._save_once(layer.experts, "_is_expert_parallel")
                layer.experts._is_expert_parallel = True  # masks sentinel rows instead of reading uninitialised memory
            config = getattr(layer.experts, "config", None)
            if use_fast and config is not None:
                self._save_once(config, "_experts_implementation")
                config._experts_implementation = experts.NAME  # grouped_mm with one inference-time mask
        self._selector = function
        self.selector_name = name
        self.selector_params = {"k_max": k_max, **params}

    def _skip_implementation(self, fast_skip: bool) -> bool:
        """Whether dropped slots go through runner.experts' grouped forward; raises where nothing can skip them."""
        implementation = getattr(self.config, "_experts_implementation", None)
        experts_module = self.layers[0].experts
        decorated = implementation is not None and any(
            isinstance(getattr(experts_module, name, None), torch.Tensor) for name in ("gate_up_proj", "up_proj"))
        # transformers before the opt-in flag: eager experts one-hot over E classes and reject the sentinel
        eager_rejects = implementation == "eager" and (
            implementation in self.handler.sentinel_breaks or not hasattr(experts_module, "_is_expert_parallel"))
        if implementation == "grouped_mm":
            return fast_skip
        if eager_rejects or implementation in self.handler.sentinel_breaks:
            if not decorated:
                raise ProfilerError(f"{self.model_type}'s {implementation!r} experts reject the sentinel index; "
                                    f"use experts_implementation='grouped_mm'")
            warnings.warn(f"{self.model_type}'s {implementation!r} experts reject the sentinel index: dropped slots "
                          f"run through {experts_module.__class__.__name__} with runner.experts' grouped forward", stacklevel=3)
            return True
        return False

    def _select(self, layer: MoELayer, logits: torch.Tensor, index: torch.Tensor, weights: torch.Tensor):
        params = dict(self.selector_params)
        k_max = index.shape[-1]
        params["k_max"] = k_max
        keep = self._selector(router_probs(logits.reshape(-1, logits.shape[-1]), layer.handler.scoring), **params)
        keep = keep.to(device=index.device, dtype=torch.bool)
        new_index = torch.where(keep, index, layer.num_experts)  # sentinel: not computed
        new_weights = weights * keep
        if self._renormalizes(layer):
            # keep the router's own total weight (1, or its routed scaling factor) over the kept experts
            scale = weights.sum(-1, keepdim=True) / new_weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
            new_weights = new_weights * scale
        return new_index, new_weights.to(weights.dtype)

    def _renormalizes(self, layer: MoELayer) -> bool:
        if self.renormalize != "auto":
            return bool(self.renormalize)
        rule = layer.handler.renormalize
        if isinstance(rule, bool):
            return rule
        return bool(getattr(self.config, rule, False))

    # -- FLOPs -------------------------------------------------------------------------------------
    @contextmanager
    def measure_flops(self) -> Iterator[Any]:
        """Count the FLOPs that really run (FlopCounterMode + formulas for aten._grouped_mm and GQA attention) per
        MoE layer, under the current phase.

        Attribution uses hooks on each layer's own modules, so it holds however the model is called. Under
        torch.compile: FlopCounterMode is a dispatch mode, and dynamo does not compile under one (it skips the frames,
        and with fullgraph=True raises instead). So inside this block compiled models run eagerly, by
        torch.compiler.set_stance("force_eager"): the forward never breaks, the count is exact (the code that runs is
        the model's own), and it is slower; compiled code is used again after the block (its caches are kept)."""
        handles = []
        measured = self._measured.setdefault(self._phase, [0] * len(self.layers))
        with count_flops() as counter, _force_eager():
            for layer in self.layers:
                for module in layer.measured_modules():
                    handles += self._flop_hooks(counter, measured, layer.position, module)
            try:
                yield counter
            finally:
                for handle in handles:
                    handle.remove()
        self._measured_taken = True

    def _flop_hooks(self, counter, measured: list[int], position: int, module: nn.Module) -> list:
        starts: list[int] = []

        def total() -> int:
            return int(sum(counter.flop_counts["Global"].values()))

        def pre(mod, args):
            starts.append(total())

        def post(mod, args, output):
            measured[position] += total() - starts.pop()

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def flops_per_token(self, k: float | None = None) -> pd.DataFrame:
        """Analytic forward FLOPs per token of each MoE layer at top-k `k` (default: the live top-k). No forward pass
        needed: works on a model built on the meta device."""
        rows = []
        for layer in self.layers:
            kk = float(k if k is not None else (read_live_top_k(layer) or layer.dims["top_k"].value))
            cost = layer.cost
            rows.append(dict(
                layer=layer.layer_id, k=kk, flops_router=cost.router, flops_experts=kk * cost.per_expert,
                flops_shared=cost.shared, flops=cost.per_token(kk), exact=layer.handler.exact,
            ))
        return pd.DataFrame(rows)

    def param_counts(self, k: float | None = None) -> dict[str, float]:
        """Total parameters, routed-expert parameters, and parameters active per token at top-k `k`."""
        total = sum(p.numel() for p in self.model.parameters())
        experts = 0
        active_experts = 0.0
        for layer in self.layers:
            n = sum(p.numel() for p in layer.experts.parameters())
            kk = float(k if k is not None else (read_live_top_k(layer) or layer.dims["top_k"].value))
            experts += n
            active_experts += n * kk / layer.num_experts
        return dict(params_total=total, params_experts=experts, params_active=total - experts + active_experts)

    # -- frames ------------------------------------------------------------------------------------
    def layers_df(self) -> pd.DataFrame:
        """One row per (phase, MoE layer): tokens, k, analytic (and measured) FLOPs, routing and balance metrics,
        latency when timed, and every resolved dimension with its source. Phases that recorded nothing are left
        out (with nothing recorded at all: one row per layer under the current phase)."""
        recorded = self._recorded_phases()
        rows = []
        for phase, snapshot in recorded.items():
            rows += self._layer_rows(phase, snapshot)
        return pd.DataFrame(rows)

    def _recorded_phases(self) -> dict[str, dict[str, np.ndarray] | None]:
        """The phases that recorded anything, each with its accumulators (None without a recorder), from one read
        of the device; with nothing recorded at all, the current phase."""
        if self.recorder is None:
            seen = [p for p in self._measured if any(self._measured[p])]
            return dict.fromkeys(seen or [self._phase])
        phases = self.recorder.read_phases()
        seen = {p: values for p, values in phases.items()
                if values["k_hist"].any() or any(self._measured.get(p, ()))}
        return seen or {self._phase: phases.get(self._phase)}

    def _layer_rows(self, phase: str, snapshot: dict[str, np.ndarray] | None) -> list[dict[str, Any]]:
        measured = self._measured.get(phase)
        rows = []
        for layer in self.layers:
            pos, experts = layer.position, layer.num_experts
            tokens = int(snapshot["k_hist"][pos].sum()) if snapshot is not None else 0
            row: dict[str, Any] = dict(phase=phase, layer=layer.layer_id, position=pos, module=layer.name,
                                       block_class=type(layer.block).__name__, top_k=read_live_top_k(layer), tokens=tokens)
            if snapshot is not None:
                counts = snapshot["counts"][pos]
                assignments = int(counts[:experts].sum())
                hist = snapshot["k_hist"][pos]
                last = int(np.nonzero(hist)[0].max()) if hist.any() else 0
                sums = snapshot["sums"][pos] / max(tokens, 1)
                row.update(
                    assignments=assignments, k_mean=assignments / tokens if tokens else float("nan"),
                    k_hist=[int(v) for v in hist[: last + 1]],
                    k_at_1=float(hist[1] / tokens) if tokens else float("nan"),
                    k_at_max=float(hist[row["top_k"]] / tokens) if tokens and row["top_k"] and row["top_k"] < len(hist) else float("nan"),
                )
                row.update(layer.cost.flops(tokens, assignments))
                row["flops"] = row["flops_router"] + row["flops_experts"] + row["flops_shared"]
                row["flops_per_token"] = row["flops"] / tokens if tokens else float("nan")
                row.update(
                    router_entropy=float(sums[0] / math.log(layer.router_width)) if layer.router_width > 1 else 0.0,
                    top1_prob=float(sums[1]), top1_margin=float(sums[2]), selected_mass=float(sums[3]),
                )
                row.update(load_balance(counts, experts))
            row["flops_measured"] = measured[pos] if self._measured_taken and measured is not None else None
            if self.timer is not None:
                row.update(self.timer.summary(pos))
            row.update(exact=layer.handler.exact, note=layer.handler.note,
                       dims_warning="; ".join(layer.warnings) or None)  # a config or override that contradicts the weights
            for dim in DIMENSIONS:
                resolved = layer.dims[dim]
                column = "default_top_k" if dim == "top_k" else dim  # `top_k` is the live value that ran
                row[column] = resolved.value
                row[f"{column}_source"] = resolved.source
                row[f"{column}_detail"] = resolved.detail
            rows.append(row)
        return rows

    def experts_df(self) -> pd.DataFrame:
        """One row per (phase, MoE layer, expert), zero-count experts included."""
        columns = ["phase", "layer", "expert", "tokens", "load_fraction", "gate_mass", "mean_prob"]
        if self.recorder is None:
            return pd.DataFrame(columns=columns)
        frames = []
        for phase, snapshot in self._recorded_phases().items():
            for layer in self.layers:
                experts = layer.num_experts
                counts = snapshot["counts"][layer.position][:experts]
                tokens = max(int(snapshot["k_hist"][layer.position].sum()), 1)
                frames.append(pd.DataFrame(dict(
                    phase=phase, layer=layer.layer_id, expert=np.arange(experts), tokens=counts.astype(np.int64),
                    load_fraction=counts / max(counts.sum(), 1),
                    gate_mass=snapshot["gate_mass"][layer.position][:experts],
                    mean_prob=snapshot["importance"][layer.position][:experts] / tokens,
                )))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def reset(self) -> None:
        """Forget everything recorded so far (hooks stay attached)."""
        if self.recorder is not None:
            self.recorder.reset()
        self._measured = {}
        self._measured_taken = False
        if self.timer is not None:
            self.timer = LayerTimer(len(self.layers), warmup=self.timer.warmup)
        self.reset_memory_peaks()

    # -- memory ------------------------------------------------------------------------------------
    def _cuda_devices(self) -> list[torch.device]:
        devices = {p.device for p in self.model.parameters() if p.device.type == "cuda"}
        return sorted(devices, key=lambda d: d.index or 0)

    def reset_memory_peaks(self) -> None:
        for device in self._cuda_devices():
            torch.cuda.reset_peak_memory_stats(device)

    def memory_df(self) -> pd.DataFrame:
        """Peak memory per CUDA device since attach/reset (empty on CPU)."""
        rows = [dict(device=str(d), name=torch.cuda.get_device_name(d),
                     peak_allocated_bytes=torch.cuda.max_memory_allocated(d),
                     peak_reserved_bytes=torch.cuda.max_memory_reserved(d)) for d in self._cuda_devices()]
        return pd.DataFrame(rows, columns=["device", "name", "peak_allocated_bytes", "peak_reserved_bytes"])

    # -- reports -----------------------------------------------------------------------------------
    def scan_report(self) -> str:
        """What was found and where each dimension came from, once per group of identical layers."""
        handler = self.handler
        name = "generic (no handler for this model_type)" if handler.model_types == ("<generic>",) else handler.model_types[0]
        lines = [f"MoE scan: {type(self.model).__name__} (model_type={self.model_type!r}, handler: {name}) — "
                 f"{len(self.layers)} MoE layers"]
        groups: list[tuple[tuple, list[MoELayer]]] = []
        for layer in self.layers:
            key = (type(layer.block).__name__, tuple((d, str(r)) for d, r in layer.dims.items()), layer.cost,
                   tuple(n.replace(layer.name, "") for n, _ in layer.shared), tuple(layer.warnings))
            if groups and groups[-1][0] == key:
                groups[-1][1].append(layer)
            else:
                groups.append((key, [layer]))
        for _, members in groups:
            first = members[0]
            ids = [m.layer_id for m in members]
            span = f"{ids[0]}" if len(ids) == 1 else (f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids)))
            pattern = re.sub(rf"(^|\.){first.layer_id}(?=\.|$)", r"\1{i}", first.name, count=1) if len(members) > 1 else first.name
            lines.append(f"Layers {span} ({len(members)} x {type(first.block).__name__} @ {pattern})")
            router = type(first.router).__name__ if first.router is not None else "none"
            lines.append(f"  Router: {router}, {handler.scoring} scores, top-k at {first.top_k_attr}, width {first.router_width}")
            for dim in DIMENSIONS:
                label = "Top-k" if dim == "top_k" else dim.replace("_", " ").capitalize()
                lines.append(f"  {label}: {first.dims[dim]}")
            k = read_live_top_k(first) or first.dims["top_k"].value
            cost = first.cost
            lines.append(f"  FLOPs/token: router {cost.router:,} + k x {cost.per_expert:,} + shared {cost.shared:,} "
                         f"= {int(cost.per_token(k)):,} at k={k}")
            for name_, _ in first.shared:
                lines.append(f"  Shared: {name_}")
            for message in first.warnings:
                lines.append(f"  WARNING: {message}")
        if handler.note:
            lines.append(f"Note: {handler.note}")
        if not handler.exact:
            lines.append("Note: FLOPs for this architecture are NOT exact (see note); frames carry exact=False")
        return "\n".join(lines)

    def report(self) -> str:
        """Scan report plus a per-layer summary of what was recorded."""
        df = self.layers_df()
        lines = [self.scan_report(), ""]
        cols = [c for c in ("layer", "tokens", "k_mean", "flops_per_token", "flops", "flops_measured", "router_entropy",
                            "top1_prob", "load_cv", "dead_experts", "latency_ms_p50") if c in df.columns]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            lines.append(df[cols].to_string(index=False))
        if "flops" in df and df["tokens"].sum():
            lines.append(f"Total MoE FLOPs: {int(df['flops'].sum()):,} over {int(df['tokens'].max()):,} tokens "
                         f"({df['flops'].sum() / df['tokens'].max():,.0f} per token)")
        return "\n".join(lines)


# -- torch.compile ---------------------------------------------------------------------------------------------------
def _optimized_module_type() -> type:
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


def _guard_hooks() -> None:
    """Make code compiled from now on guard on nn.Module hooks (dynamo skips those guards by default). Without
    them, compiled code is shared by every instance of a module class whatever its hooks: a model compiled before
    (or a twin of it) would run the profiled one without its hooks, silently counting nothing, and removing hooks
    would not stop them. With them, adding or removing hooks re-traces once. The guards only add checks (a process
    setting, left on: nothing that was right becomes wrong)."""
    torch._dynamo.config.skip_nnmodule_hook_guards = False


def _force_eager():
    """Compiled functions run as plain Python (torch >= 2.6 has set_stance; older: dynamo skips under the mode)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _layer_device(layer: MoELayer) -> torch.device:
    """Where a layer's routing lives: its router's (or block's) first parameter."""
    for module in (layer.router, layer.block):
        if module is not None:
            for param in module.parameters():
                return param.device
    return torch.device("cpu")


def _has_compiled_code(model: nn.Module, layers: list[MoELayer]) -> bool:
    """Whether dynamo holds compiled code for the module calls of this model (torch.compile(model), model.compile(),
    generate's compiled step): the frames it compiles are nn.Module's call wrappers and the models' forwards."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    except ImportError:  # pragma: no cover - private API; without it, attach-after-compile is the user's to avoid
        return False
    codes = {nn.Module._call_impl.__code__, nn.Module._wrapped_call_impl.__code__, type(model).forward.__code__}
    codes |= {type(m).forward.__code__ for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    codes |= {type(layer.block).forward.__code__ for layer in layers[:1]}
    return any(_debug_get_cache_entry_list(code) for code in codes)
