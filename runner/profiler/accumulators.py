"""The routing recorder: fixed-size accumulators, registered buffers on each layer's device, updated in place.

On CUDA (triton installed): every router call is reduced at once by one Triton kernel (fused.py), eager, traced
and captured alike: no staging, no reference to the router's outputs, one launch per layer per call (co-activation,
opt-in, keeps the torch path below). The torch path is the reference, and what runs on the CPU.

Two ways in on the torch path, one set of accumulators:
  * traced (torch.compile) or captured (CUDA graphs): the hook reduces the call's routing at once with in-place
    tensor ops into the buffers (`index_add_`). No Python state changes, no reference to the router's outputs is
    kept, shapes are static: dynamo traces it without a graph break and CUDA graphs replay it (buffers are
    marked static, so inductor keeps cudagraphs on).
  * eager: the hook copies the call's routing into a preallocated staging buffer (a copy, never a reference, so a
    tensor from a CUDA-graph pool can be overwritten afterwards without harm); every `capacity` tokens, or when a
    frame is asked for, the staged routing of all layers is reduced in a handful of kernels.
Memory is fixed: staging for `capacity` tokens plus O(E) accumulators per layer and phase, whatever the tokens seen.
Token counts live on the device too (the k histogram sums to them): Python reads the buffers only for a frame.
The metric definitions are in runner/profiler/metrics.py.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from handlers.base import Scoring

from .analysis_set import Analyses
from .drops import add_call_drops, add_staged_drops
from .phases import DEFAULT_PHASES
from . import lookahead, vocab
from .layer_accumulators import LayerAccumulators, capturing


class RoutingRecorder:
    """Per-layer, per-phase routing statistics of `num_layers` MoE layers (see the module docstring).

    router_width: the router's output width per layer (or one for all); num_experts: real (computing) experts per
    layer, indices >= this are not counted; devices: each layer's device (default CPU); vocab_size: the token ids
    counted with analyses.vocab (0..vocab_size - 1); phases: labels known up front (more can be added with set_phase,
    which reallocates the accumulators once).
    """

    def __init__(self, num_layers: int, router_width: int | list[int], num_experts: list[int], scoring: Scoring,
                 capacity: int | None = None, devices: list[torch.device] | None = None, vocab_size: int = 0,
                 phases: tuple[str, ...] = DEFAULT_PHASES, analyses: Analyses | Iterable[str] | None = None):
        self.num_layers, self.vocab_size = num_layers, vocab_size
        self.analyses = Analyses.of(analyses)
        widths = router_width if isinstance(router_width, (list, tuple)) else [router_width] * num_layers
        # a router may score more or fewer columns than its weight has rows (zero-compute experts, MLP routers)
        self.widths = [max(int(w), int(e)) for w, e in zip(widths, num_experts)]
        self.router_width = max(self.widths)
        self.num_experts = list(num_experts)
        self.scoring = scoring
        self.capacity = capacity or 8192
        self.devices = [torch.device(d) for d in (devices or ["cpu"] * num_layers)]
        self.phases = list(phases)
        self._phase = 0
        self._allocate()

    def _allocate(self) -> None:
        keyed: dict[tuple[str, int], list[int]] = {}
        for position, (device, width) in enumerate(zip(self.devices, self.widths)):
            keyed.setdefault((str(device), width), []).append(position)
        old = getattr(self, "groups", None)
        self.groups = [LayerAccumulators(positions, width, [self.num_experts[p] for p in positions], len(self.phases),
                                         self.devices[positions[0]], self.analyses, self.router_width, self.vocab_size)
                       for (_, width), positions in keyed.items()]
        self._where = {p: (group, row) for group in self.groups for row, p in enumerate(group.positions)}
        if old is not None:  # more phases: carry what was recorded over
            for before, after in zip(old, self.groups):
                for name, now in before.read().items():
                    padded = np.zeros((now.shape[0], len(self.phases), *now.shape[2:]), dtype=now.dtype)
                    padded[:, : now.shape[1]] = now
                    getattr(after, name).copy_(torch.from_numpy(padded.reshape(-1)))
        for group in self.groups:
            group.phase.fill_(self._phase)
        self._stage: dict[int, list[torch.Tensor]] = {}  # id(group) -> [logits, index, weight], [L, capacity, .]
        self._fill = [0] * self.num_layers  # staged tokens per layer (eager only)
        self._calls: list[list[int]] = [[] for _ in range(self.num_layers)]  # their calls' sizes (capacity drops)

    # -- phases ----------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return self.phases[self._phase]

    def set_phase(self, name: str) -> None:
        """Label what is recorded from now on. Known phases: a device fill, nothing compiled code reads changes.
        A new name reallocates the accumulators once (compiled code re-traces once)."""
        if name == self.phase:
            return
        self.flush()  # staged tokens belong to the phase they ran in
        if name not in self.phases:
            self.phases.append(name)
            self._phase = len(self.phases) - 1
            self._allocate()
            return
        self._phase = self.phases.index(name)
        for group in self.groups:
            group.phase.fill_(self._phase)

    # -- hot path --------------------------------------------------------------------------------
    def record(self, layer: int, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> None:
        group, row = self._where[layer]
        width, slots = logits.shape[-1], index.shape[-1]
        if width > group.width:
            raise ValueError(f"MoE layer {layer}: the router scored {width} experts, more than the {group.width} "
                             f"the profiler allocated for")
        logits, index, weight = logits.detach().reshape(1, -1, width), index.reshape(1, -1, slots), \
            weight.detach().reshape(1, -1, slots)
        traced = torch.compiler.is_compiling() or capturing()
        if group.fused:  # CUDA: one kernel for this call, no staging (the analyses below stay per call)
            self._per_call_analyses(group, layer, row, logits, index)
            group.add_call(row, logits[0], index[0], weight[0], self.num_experts[layer], self.scoring,
                           traced=torch.compiler.is_compiling())
            return
        if group.num_factors and traced:  # per call (eager: at flush, from the staged calls, drops.py)
            add_call_drops(group, slice(row, row + 1), index, self.num_experts[layer], dense=torch.compiler.is_compiling())
        self._per_call_analyses(group, layer, row, logits, index)
        if traced:  # reduce now, in place (the `is_compiling` test is a constant under dynamo)
            group.accumulate(slice(row, row + 1), logits, index, weight, self.scoring,
                             dense=torch.compiler.is_compiling())
            return
        tokens = logits.shape[1]
        stage = self._stage.get(id(group))
        if (stage is None or stage[0].shape[-1] != width or stage[1].shape[-1] != slots
                or stage[0].device != logits.device):
            self.flush()
            stage = self._stage[id(group)] = self._staging(group, logits, index, weight)
        elif self._fill[layer] + tokens > self.capacity:
            self.flush()
        if tokens > self.capacity:  # one call larger than the staging buffer: reduce it directly
            group.accumulate(slice(row, row + 1), logits, index, weight, self.scoring)
            if group.num_factors:
                add_call_drops(group, slice(row, row + 1), index, self.num_experts[layer], dense=False)
            return
        self._calls[layer].append(tokens)
        start = self._fill[layer]
        for staged, value in zip(stage, (logits[0], index[0], weight[0])):
            staged[row, start: start + tokens].copy_(value)
        self._fill[layer] = start + tokens

    def _per_call_analyses(self, group: LayerAccumulators, layer: int, row: int, logits: torch.Tensor,
                           index: torch.Tensor) -> None:
        """Transitions, the layer-ahead prediction's score and the vocabulary table (opt-in) are per call on every
        path."""
        if group.transition_width:  # pairs this call's tokens with the previous MoE layer's last call
            mask = group.selection_mask(index[0], group.transition_width, group.real[row],
                                        dense=torch.compiler.is_compiling())
            if layer > 0:
                previous, previous_row = self._where[layer - 1]
                previous.add_transition(previous_row, mask, dense=torch.compiler.is_compiling())
            group.keep_selection(row, mask)
        if group.lookahead_width and layer > 0:  # scores the previous MoE layer's prediction of this call's experts
            lookahead.score(*self._where[layer - 1], group, index[0], self.num_experts[layer])
        vocab.add_call(group, row, logits, index)  # (if on): the captured ids are this forward's

    def _staging(self, group: LayerAccumulators, logits, index, weight) -> list[torch.Tensor]:
        rows, device = len(group.positions), logits.device
        with torch.inference_mode(False):
            return [torch.empty(rows, self.capacity, t.shape[-1], dtype=t.dtype, device=device)
                    for t in (logits, index, weight)]

    # -- bulk reduction --------------------------------------------------------------------------
    @torch.no_grad()
    def flush(self) -> None:
        """Reduce every staged token into the accumulators (all layers of a group at once when they are level)."""
        if not any(self._fill):
            return
        for group in self.groups:
            stage = self._stage.get(id(group))
            fills = [self._fill[p] for p in group.positions]
            if stage is None or not any(fills):
                continue
            if len(set(fills)) == 1:
                n = fills[0]
                group.accumulate(slice(None), *(t[:, :n] for t in stage), self.scoring)
            else:  # layers called unequally often (looped layers, partial forwards)
                for row, n in enumerate(fills):
                    if n:
                        group.accumulate(slice(row, row + 1), *(t[row: row + 1, :n] for t in stage), self.scoring)
            if group.num_factors:
                add_staged_drops(group, stage[1], [self._calls[p] for p in group.positions])
            for p in group.positions:
                self._fill[p] = 0
                self._calls[p] = []

    # -- read-out --------------------------------------------------------------------------------
    def read_phases(self, names: tuple[str, ...] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Host copies of every accumulator (or those `names`), per phase: {phase: {name: [L, entries]}} (one read of
        the device)."""
        self.flush()
        out: dict[str, np.ndarray] = {}
        for group in self.groups:  # groups of narrower routers are padded with zeros to the widest
            for name, values in group.read(names).items():
                if name not in out:
                    full = [max(g.shapes()[name][d] for g in self.groups) for d in range(values.ndim - 2)]
                    out[name] = np.zeros((self.num_layers, len(self.phases), *full), values.dtype)
                out[name][(group.positions, slice(None), *(slice(0, n) for n in values.shape[2:]))] = values
        factors = np.array(self.analyses.capacity_factors, dtype=np.float64)
        return {phase: {**{name: v[:, i] for name, v in out.items()}, "capacity_factors": factors}
                for i, phase in enumerate(self.phases)}

    def snapshot(self, phase: str | None = None, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Host copies of the accumulators (or those `names`), [L, ...] per layer: one phase, or summed over phases
        (the one sync)."""
        phases = self.read_phases(names)
        if phase is not None:
            return phases[phase]
        first = next(iter(phases.values()))
        return {name: first[name] if name == "capacity_factors" else sum(values[name] for values in phases.values())
                for name in first}

    def tokens_by_phase(self) -> dict[str, list[int]]:
        """Tokens seen per phase and layer: the k histogram sums to them."""
        return {phase: [int(v) for v in values["k_hist"].sum(-1)]
                for phase, values in self.read_phases(("k_hist",)).items()}

    @property
    def tokens(self) -> list[int]:
        """Tokens seen per layer, all phases (reads the device)."""
        per_phase = self.tokens_by_phase()
        return [sum(per_phase[name][i] for name in self.phases) for i in range(self.num_layers)]

    def reset(self) -> None:
        """Zero the accumulators in place (their addresses stay: compiled code and CUDA graphs keep using them)."""
        self._fill = [0] * self.num_layers
        self._calls = [[] for _ in range(self.num_layers)]
        for group in self.groups:
            for name in group.shapes():
                getattr(group, name).zero_()
            group.selection_tokens.fill_(-1)
            lookahead.reset(group)

    @property
    def buffer_bytes(self) -> int:
        """Device bytes the recorder holds: accumulators plus the staging buffers."""
        held = [t for group in self.groups for t in group.buffers()] + [t for s in self._stage.values() for t in s]
        return sum(t.numel() * t.element_size() for t in held)
