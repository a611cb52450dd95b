"""MOEProfiler: attach to any transformers MoE model with hooks (no module replacement) and report routing, exact
FLOPs, latency and memory per MoE layer.

A thin facade over parts with one job each: scan.py finds the MoE layers, attach.py owns the hooks and phases,
routing_control.py changes top-k and selectors, accumulators.py accumulates routing on the device, cost_layers.py
counts FLOPs and parameters, frames.py lays the results out.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from . import frames, upstream
from .attach import Attachment, ProfilerError, layer_device
from .cost_layers import Cost
from .latency import LayerTimer
from .phases import DEFAULT_PHASES
from .cost_model import ForwardCost, forward_cost
from .analysis_set import Analyses
from .accumulators import RoutingRecorder
from .routing_control import Routing
from .scan import MoELayer, read_live_top_k, scan_model, text_config

__all__ = ["Analyses", "MOEProfiler", "ProfilerError"]


class MOEProfiler:
    """Profile the MoE layers of `model`.

    overrides / fallbacks: dimension values placed above / below `model.config` in the priority chain
    (keys: num_experts, top_k, hidden_dim, expert_dim, shared_expert_dim).
    selector: a dynamic-k policy name (see runner.profiler.selectors) or a function probs[T, E] -> keep mask [T, k_max].
    latency: time each MoE block (CUDA events on GPU); adds hooks, off by default.
    phases: the labels `set_phase()` switches between without recompiling compiled code (others can be added later,
    at the cost of one re-trace).
    analyses: the routing analyses beyond load balance (an `Analyses`, or names: `("capacity", "coactivation")`);
    default: the top-k boundary margin only (always on); capacity drops ("capacity": factors 1, 1.25, 1.5, 2),
    co-activation, transitions and vocabulary specialization ("vocab": a [vocab_size, E] int32 table per layer and
    phase) are opt-in.
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
        phases: Sequence[str] = DEFAULT_PHASES,
        analyses: Analyses | Sequence[str] | None = None,
        verbose: bool = True,
    ):
        model = upstream.unwrap_compiled(model)  # torch.compile(model): profile the module it wraps
        self.model = model
        self.config = text_config(model)
        self.model_type = getattr(self.config, "model_type", None)
        self.layers: list[MoELayer] = scan_model(model, overrides=overrides, fallbacks=fallbacks)
        self.handler = self.layers[0].handler
        for layer in self.layers:
            for message in layer.warnings:
                warnings.warn(f"layer {layer.layer_id}: {message}", stacklevel=2)
        self.devices = [layer_device(layer) for layer in self.layers]  # where each layer's routing runs and is kept
        observable = self.layers[0].router_output != "none"
        analyses = Analyses.of(analyses)
        vocab_size = int(getattr(self.config, "vocab_size", None) or 0) if analyses.vocab else 0
        if analyses.vocab and not vocab_size:
            raise ProfilerError(f"the vocabulary analysis needs the token ids' range, and {type(self.config).__name__} "
                                f"has no vocab_size ({getattr(self.config, 'vocab_size', None)!r}): profile without "
                                f"analyses 'vocab'")
        self.recorder = (
            RoutingRecorder(
                len(self.layers), router_width=[l.router_width for l in self.layers],
                num_experts=[l.num_experts for l in self.layers], scoring=self.handler.scoring, capacity=buffer_tokens,
                devices=self.devices, phases=tuple(phases), analyses=analyses,
                vocab_size=vocab_size,
            )
            if metrics and observable else None
        )
        self.timer = LayerTimer(len(self.layers), warmup=warmup) if latency else None
        self.attachment = Attachment(model, self.layers, self.recorder, self.timer, self.model_type)
        self.routing = Routing(self.attachment, self.layers, self.config, self.model_type, renormalize)
        self.cost = Cost(model, self.layers)
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
        if not self.attachment.handles:
            self.attachment.attach()
            self.reset_memory_peaks()
        return self

    def detach(self) -> None:
        """Remove every hook and restore every attribute changed (top-k, sentinel flags): the model is as before."""
        self.attachment.detach()
        self.routing.clear()

    def __enter__(self) -> "MOEProfiler":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- phases ------------------------------------------------------------------------------------
    @property
    def current_phase(self) -> str:
        return self.attachment.phase

    def set_phase(self, name: str) -> None:
        """Label what is recorded from now on ("prefill" by default, "decode", or any name): layers_df() gives one
        row per (phase, layer). The phases given at construction are preallocated: switching between them is a
        device-side fill, so compiled code does not recompile; a new name reallocates the accumulators (one re-trace)."""
        self.attachment.set_phase(name)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """`with profiler.phase("decode"): ...` records under that label, then restores the previous one."""
        previous = self.current_phase
        self.set_phase(name)
        try:
            yield
        finally:
            self.set_phase(previous)

    def paused(self):
        """Run the model without recording or selecting (e.g. a reference pass). Compiled code guards on the flag:
        the first paused call (and the first after) re-traces once, never runs stale hooks."""
        return self.attachment.paused()

    def default_routing(self):
        """Run the model as it was before the profiler changed anything (original top-k, no selector, nothing
        recorded): the reference for quality comparisons. Changes made through the profiler come back after."""
        return self.attachment.default_routing()

    # -- top-k and selectors -----------------------------------------------------------------------
    def set_top_k(self, k: int) -> None:
        """Change the routers' real top-k (compute changes with it); undone by detach()."""
        self.routing.set_top_k(k)

    @property
    def top_k(self) -> int | None:
        return self.routing.top_k

    def set_selector(self, selector: str | Callable, *, fast_skip: bool = True, **params: Any) -> None:
        """Per-token dynamic k: the routers propose k_max candidates, `selector` keeps a prefix of them and
        dropped slots get the sentinel index (num_experts) and weight 0, so their experts are not computed.

        fast_skip: under transformers' `grouped_mm`, run the experts through runner.profiler.experts' forward-only
        variant (the same computation with one sentinel mask instead of training-time masks)."""
        self.routing.set_selector(selector, fast_skip=fast_skip, **params)

    @property
    def selector_name(self) -> str | None:
        return self.routing.selector_name

    @property
    def selector_params(self) -> dict[str, Any]:
        return self.routing.selector_params

    # -- FLOPs and parameters ----------------------------------------------------------------------
    def measure_flops(self):
        """Count the FLOPs that really run (FlopCounterMode + formulas for aten._grouped_mm and GQA attention) per
        MoE layer, under the current phase.

        Attribution uses hooks on each layer's own modules, so it holds however the model is called. Under
        torch.compile: FlopCounterMode is a dispatch mode, and dynamo does not compile under one (it skips the frames,
        and with fullgraph=True raises instead). So inside this block compiled models run eagerly, by
        torch.compiler.set_stance("force_eager"): the forward never breaks, the count is exact (the code that runs is
        the model's own), and it is slower; compiled code is used again after the block (its caches are kept)."""
        return self.cost.measure_flops(self.current_phase, self._routed_pairs if self.recorder is not None else None)

    def _routed_pairs(self) -> list[tuple[int, int]]:
        """Per layer, (tokens, computed expert pairs) recorded so far over every phase: one read of the device, of the
        two accumulators it needs (not the analyses' tables)."""
        snapshot = self.recorder.snapshot(names=("k_hist", "counts"))
        out = []
        for layer in self.layers:
            tokens = int(snapshot["k_hist"][layer.position].sum())
            assignments = int(snapshot["counts"][layer.position][: layer.num_experts].sum())
            out.append((tokens, layer.computed_pairs(tokens, assignments, read_live_top_k(layer))))
        return out

    def flops_per_token(self, k: float | None = None) -> pd.DataFrame:
        """Analytic forward FLOPs per token of each MoE layer at top-k `k` (default: the live top-k). No forward pass
        needed: works on a model built on the meta device."""
        return self.cost.flops_per_token(k)

    def param_counts(self, k: float | None = None) -> dict[str, float]:
        """Total parameters, routed-expert parameters, and parameters active per token at top-k `k` (with the
        embeddings: `params_active`; without the input embedding tables: `params_active_nonembedding`)."""
        return self.cost.param_counts(k)

    def forward_cost(self) -> ForwardCost:
        """The non-MoE parts of the whole forward (dense layers, attention, LM head) from the modules' shapes, for
        whole-model FLOPs of any batch and sequence length: `forward_cost().flops(batch, seq_q, seq_k, ...)`."""
        return forward_cost(self.model, self.layers)

    def model_flops_per_token(self, batch: int, seq_q: int, seq_k: int | None = None, k: float | None = None,
                              causal: bool = False) -> float:
        """Analytic FLOPs per token of the whole forward of `batch` x `seq_q` tokens against `seq_k` keys, the MoE
        layers at top-k `k` (default: the live top-k). No forward pass needed (meta device)."""
        moe = float(self.flops_per_token(k)["flops"].sum())
        return self.forward_cost().per_token(batch, seq_q, seq_k, moe_per_token=moe, causal=causal)

    def model_flops_measured(self) -> dict[str, int]:
        """phase -> FlopCounterMode FLOPs of the whole forward passes run under measure_flops()."""
        return dict(self.cost.forward_measured) if self.cost.taken else {}

    # -- frames and reports ------------------------------------------------------------------------
    def layers_df(self) -> pd.DataFrame:
        """One row per (phase, MoE layer): tokens, k, analytic (and measured) FLOPs, routing and balance metrics,
        latency when timed, and every resolved dimension with its source. Phases that recorded nothing are left
        out (with nothing recorded at all: one row per layer under the current phase)."""
        return frames.layers_frame(self)

    def experts_df(self) -> pd.DataFrame:
        """One row per (phase, MoE layer, expert), zero-count experts included."""
        return frames.experts_frame(self)

    def coactivation_df(self) -> pd.DataFrame:
        """(phase, layer, expert_a, expert_b, count): tokens that selected both experts, nonzero pairs a != b only
        (needs analyses with co-activation on)."""
        return frames.coactivation_frame(self)

    def transitions_df(self) -> pd.DataFrame:
        """(phase, layer, next_layer, expert_a, expert_b, count): tokens routed to a at a MoE layer and to b at the
        next one, nonzero entries only (needs analyses with transitions on)."""
        return frames.transitions_frame(self)

    def placement_df(self, ep_sizes: Sequence[int] | None = None, redundant: Sequence[int] | None = None,
                     fit_on: pd.DataFrame | None = None, fitted_on: str = "other") -> pd.DataFrame:
        """Expert-parallel placements of the measured loads: per (phase, layer, ep_size, placement) the imbalance,
        balancedness, busiest rank's tokens and the placement (expert -> ranks). ep_sizes: default those of
        placement.EP_SIZES dividing E; redundant: replica counts for `balanced+r<R>` (default: R = ep_size).
        fit_on: other loads (layer, expert, tokens: e.g. another run's experts rows) to fit the balanced placements
        on; they are scored on these loads beside the ones fitted here (rows labelled `fitted_on`)."""
        return frames.placement_frame(self, ep_sizes, redundant, fit_on, fitted_on)

    # -- routing trace -----------------------------------------------------------------------------
    def start_trace(self, capacity: int, probs: bool = False) -> None:
        """Keep every token's routing on the device (trace.py) until `drain_trace()`; `capacity`: tokens per MoE
        layer between two drains (more are counted as overflow, not kept). Start it before compiling."""
        from .trace import RoutingTrace

        slots = max([self.top_k or 0, int(self.selector_params.get("k_max") or 0)]
                    + [int(l.dims["top_k"].value or 0) for l in self.layers])
        self.attachment.trace = RoutingTrace(
            [l.num_experts for l in self.layers], [max(l.router_width, l.num_experts) for l in self.layers], slots, capacity,
            self.devices, self.handler.scoring, [self.current_phase], probs=probs)

    def drain_trace(self) -> list[dict[str, Any]]:
        """Per MoE layer, what the trace holds since the last drain (experts, weights, phase index, probs, overflow),
        in call order; the trace is empty after. Phase names: `trace_phases`."""
        if self.attachment.trace is None:
            raise ProfilerError("no routing trace: call profiler.start_trace(capacity) first")
        return self.attachment.trace.drain()

    def stop_trace(self) -> None:
        """Stop tracing and free the trace's buffers (compiled code re-traces once without it)."""
        self.attachment.trace = None

    @property
    def trace_phases(self) -> list[str]:
        return self.attachment.trace.phases if self.attachment.trace is not None else []

    def memory_df(self) -> pd.DataFrame:
        """Peak memory per CUDA device the model uses since attach/reset, with each device's capacity (empty on
        CPU)."""
        return frames.memory_frame(self.model)

    def scan_report(self) -> str:
        """What was found and where each dimension came from, once per group of identical layers."""
        return frames.scan_report(self)

    def report(self) -> str:
        """Scan report plus a per-layer summary of what was recorded."""
        return frames.report(self)

    def reset(self) -> None:
        """Forget everything recorded so far (hooks stay attached)."""
        if self.recorder is not None:
            self.recorder.reset()
        self.cost.reset()
        if self.attachment.trace is not None:
            self.attachment.trace.reset()
        if self.timer is not None:
            self.timer = self.attachment.timer = LayerTimer(len(self.layers), warmup=self.timer.warmup)
        self.reset_memory_peaks()

    def reset_memory_peaks(self) -> None:
        for device in frames.cuda_devices(self.model):
            torch.cuda.reset_peak_memory_stats(device)
