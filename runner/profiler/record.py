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
from torch import nn

from handlers.base import Scoring

from .analyses import Analyses
from .drops import add_call_drops, add_staged_drops
from . import fused
from .metrics import SUMS, boundary_margin, router_probs, top1_and_margin
from .upstream import mark_static
from . import lookahead, vocab


def _capturing() -> bool:
    """True while a CUDA graph is being captured on the current stream (hooks run once, at capture)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class LayerAccumulators(nn.Module):
    """Accumulators of the MoE layers that share one device and router width, as flat registered buffers.

    Layout: row r (a layer), phase p -> slot s = r * P + p; counts / gate_mass / importance hold W entries per slot,
    k_hist W + 1, sums len(SUMS), drops F + 1 (F capacity factors, then sum T * k) and
    distinct 3 (with the drops: sums over calls of distinct experts and their uniform reference, calls), coactivation W * W, transitions
    V * V and jaccard 2 (V: the widest router of the model), vocab vocab_size * W (int32, vocab.py), or nothing where
    the analysis is off (lookahead: 2, lookahead.py). `selection` holds each row's last call's [tokens, V] selection
    (not per phase), `selection_tokens` its size (-1: none). The current phase is a device scalar (`phase`): switching
    phases changes no Python state that compiled code reads (no recompile; CUDA-graph replays pick the new phase up).
    """

    def __init__(self, positions: list[int], width: int, num_experts: list[int], phases: int, device: torch.device,
                 analyses: Analyses = Analyses(), transition_width: int = 0, vocab_size: int = 0):
        super().__init__()
        self.positions, self.width, self.phases = positions, width, phases
        self.num_factors, self.coactive = len(analyses.capacity_factors), analyses.coactivation
        L, W, P, F = len(positions), width, phases, len(analyses.capacity_factors)
        V = self.transition_width = transition_width if analyses.transitions else 0
        with torch.inference_mode(False):  # normal tensors, updatable in and out of inference mode
            i64, f64 = dict(dtype=torch.int64, device=device), dict(dtype=torch.float64, device=device)
            self.register_buffer("counts", torch.zeros(L * P * W, **i64))
            self.register_buffer("gate_mass", torch.zeros(L * P * W, **f64))
            self.register_buffer("importance", torch.zeros(L * P * W, **f64))
            self.register_buffer("k_hist", torch.zeros(L * P * (W + 1), **i64))
            self.register_buffer("sums", torch.zeros(L * P * len(SUMS), **f64))
            self.register_buffer("drops", torch.zeros(L * P * (F + 1) if F else 0, **i64))
            # with the drops (they see each call's loads): sum of distinct experts per call, its uniform reference, calls
            self.register_buffer("distinct", torch.zeros(L * P * 3 if F else 0, **f64))
            self.register_buffer("coactivation", torch.zeros(L * P * W * W if self.coactive else 0, **i64))
            self.register_buffer("factors", torch.tensor(analyses.capacity_factors, **f64))
            self.register_buffer("transitions", torch.zeros(L * P * V * V, **i64))
            self.register_buffer("jaccard", torch.zeros(L * P * 2 if V else 0, **f64))
            self.register_buffer("selection", torch.zeros(L if V else 0, 0, V, dtype=torch.uint8, device=device))
            self.register_buffer("selection_tokens", torch.full((L if V else 0,), -1, **i64))
            A = self.lookahead_width = lookahead.register(self, transition_width if analyses.lookahead else 0, device)
            self.vocab_size = vocab.register(self, vocab_size if analyses.vocab else 0, device)
            self.register_buffer("phase", torch.zeros((), **i64))
            self.register_buffer("row_slots", torch.arange(L, **i64) * P)  # first slot of each row
            self.register_buffer("real", torch.tensor(num_experts, **i64).view(L, 1, 1))  # indices >= this: not computed
            entries = max(W * W if self.coactive else W, V * V, A, len(SUMS), P, F + 1)
            self.register_buffer("columns", torch.arange(entries, **i64))
            # the fused kernel's per-call scratch (each row's expert counts and a ticket), left zeroed by the kernel
            self.register_buffer("call_counts", torch.zeros(L * fused.padded(W), **i64))
            self.register_buffer("tickets", torch.zeros(L, dtype=torch.int32, device=device))
            # stand-ins for the drops buffer and the factors where there are none (the kernel reads neither then);
            # distinct tensors, so no two arguments of the custom op alias
            self.register_buffer("no_drops", torch.zeros(0 if F else 1, **i64))
            self.register_buffer("no_factors", torch.zeros(0 if F else 1, **f64))
            self.register_buffer("no_distinct", torch.zeros(0 if F else 1, **f64))
        # one Triton kernel per call on CUDA (fused.py); co-activation (opt-in) keeps the torch path
        self.fused = fused.available() and torch.device(device).type == "cuda" and not self.coactive
        for buffer in self.buffers():
            # in-place updates of static-address buffers are allowed inside CUDA graphs (inductor keeps cudagraphs)
            mark_static(buffer)

    @torch.no_grad()
    def accumulate(self, rows: slice, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                   scoring: Scoring, dense: bool = False) -> None:
        """Add [L', n, w] logits and [L', n, slots] routing of rows `rows` to the current phase, in place.

        dense (where the call is traced): per-expert counts, gate mass and the k histogram as one-hot reductions,
        added to the rows' [phases, entries] blocks through a phase mask: elementwise and reduction ops that
        inductor fuses, with no indexed write at all. `index_add_` instead would be atomic adds of thousands of
        tokens onto E (for k: one or two) addresses, and for int64 / fp64 inductor has no atomic add and falls back
        to a sort-based index_put (about 26 extra kernels per layer per decode step on an H100). The eager bulk
        path keeps `index_add_`: unfused, a one-hot would be materialised."""
        W, w = self.width, logits.shape[-1]
        probs = router_probs(logits, scoring)  # [L', n, w] fp32
        entropy = torch.special.entr(probs).sum(-1)
        top1, margin = top1_and_margin(probs)
        valid = (index >= 0) & (index < self.real[rows])
        safe = index.clamp(0, w - 1).long()
        selected_mass = (probs.gather(-1, safe) * valid).sum(-1)
        k = valid.sum(-1)  # [L', n]
        if dense:
            hit = (safe.unsqueeze(-1) == self.columns[:W]) & valid.unsqueeze(-1)  # [L', n, slots, W]
            chosen = hit.sum(2).float()  # [L', n, W]: slots on each expert
        else:
            chosen = torch.zeros(*k.shape, W, device=k.device).scatter_add_(-1, safe, valid.float())
        boundary, defined = boundary_margin(probs, chosen[..., :w] > 0)
        # fp64 sums: order-independent, so eager and compiled runs agree to rounding
        sums = torch.stack([entropy, top1, margin, selected_mass, boundary, defined.float()],
                           dim=-1).sum(1, dtype=torch.float64)
        importance = torch.nn.functional.pad(probs.sum(1, dtype=torch.float64), (0, W - w))  # [L', W]
        updates = dict(importance=importance, sums=sums)
        if self.coactive:  # C = M^T M, M the [n, W] selection: exact in fp32 up to 2^24 tokens a reduction
            updates["coactivation"] = torch.bmm(chosen.transpose(1, 2), chosen).round().long().flatten(1)
        if dense:
            k_values = torch.arange(W + 1, device=k.device)
            updates.update(
                counts=hit.sum((1, 2)), gate_mass=torch.where(hit, weight.unsqueeze(-1), 0).sum((1, 2), dtype=torch.float64),
                k_hist=(k.unsqueeze(-1) == k_values).sum(1))
        else:
            slot = self.row_slots[rows] + self.phase  # [L']
            expert_at = (safe + (slot * W).view(-1, 1, 1)).flatten()
            self.counts.index_add_(0, expert_at, valid.flatten().long())
            self.gate_mass.index_add_(0, expert_at, torch.where(valid, weight, 0).flatten().double())
            self.k_hist.index_add_(0, (k + (slot * (W + 1)).view(-1, 1)).flatten(), torch.ones_like(k).flatten())
        for name, delta in updates.items():
            self._add(name, rows, delta, dense)

    def add_call(self, row: int, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, real: int,
                 scoring: Scoring, traced: bool) -> None:
        """Add one router call ([n, w] logits, [n, slots] index and weight) of row `row` to the current phase: what
        accumulate and add_call_drops add, in one launch of the fused kernel (the custom op where traced)."""
        buffers = [getattr(self, name) for name in fused.BUFFERS]
        factors = self.factors
        if not self.num_factors:
            buffers[fused.BUFFERS.index("drops")], factors = self.no_drops, self.no_factors
            buffers[fused.BUFFERS.index("distinct")] = self.no_distinct
        args = (logits, index, weight, self.phase, factors)
        settings = (self.width, real, row, row * self.phases, fused.SCORING_CODES[scoring], self.num_factors)
        if traced:
            fused.OP(*args, *buffers, *settings)
        elif logits.is_cuda:  # Triton launches on the current device: a split model's layer may be on another
            with torch.cuda.device(logits.device):
                fused.launch(fused.kernel(False), *args, buffers, *settings)
        else:  # the CPU, through Triton's interpreter (tests)
            fused.launch(fused.kernel(fused.interpreting()), *args, buffers, *settings)

    def _add(self, name: str, rows: slice, delta: torch.Tensor, dense: bool) -> None:
        """Add [L', entries] to the current phase of rows `rows` of buffer `name`: through a phase mask (traced:
        no indexed write), or by `index_add_` (eager)."""
        L, P, buffer = len(self.positions), self.phases, getattr(self, name)
        if dense:
            in_phase = (self.columns[:P] == self.phase).view(1, P, 1)  # [1, P, 1]: the current phase's row
            block = buffer.view(L, P, -1)[rows]  # [L', P, entries]
            block += torch.where(in_phase, delta.unsqueeze(1), 0).to(block.dtype)
            return
        size = delta.shape[-1]
        at = ((self.row_slots[rows] + self.phase) * size).view(-1, 1) + self.columns[:size]
        buffer.index_add_(0, at.flatten(), delta.flatten().to(buffer.dtype))

    def read(self) -> dict[str, np.ndarray]:
        """Host copies shaped [L, P, ...] (the one sync)."""
        L, P = len(self.positions), self.phases
        out = {}
        for name, shape in self.shapes().items():
            buffer = getattr(self, name)
            if buffer.is_meta:  # a model built on the meta device records nothing
                buffer = torch.zeros(buffer.shape, dtype=buffer.dtype)
            out[name] = buffer.cpu().numpy().reshape(L, P, *shape)
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each accumulator's entries per (layer, phase); the analyses that are off are left out."""
        W = self.width
        shapes = dict(counts=(W,), gate_mass=(W,), importance=(W,), k_hist=(W + 1,), sums=(len(SUMS),))
        if self.num_factors:
            shapes.update(drops=(self.num_factors + 1,), distinct=(3,))
        if self.coactive:
            shapes["coactivation"] = (W, W)
        if self.transition_width:
            shapes.update(transitions=(self.transition_width,) * 2, jaccard=(2,))
        shapes.update(lookahead.shapes(self))
        shapes.update(vocab.shapes(self))
        return shapes

    # -- cross-layer transitions (opt-in) --------------------------------------------------------------------------
    def selection_mask(self, index: torch.Tensor, width: int, limit, dense: bool) -> torch.Tensor:
        """One call's [n, width] 0/1 selection (uint8) from its [n, slots] index: the experts below `limit` (the
        layer's real experts: sentinel / zero-compute slots excluded) each token selected."""
        valid = (index >= 0) & (index < limit)
        safe = index.clamp(0, width - 1).long()
        if dense:
            hit = ((safe.unsqueeze(-1) == self.columns[:width]) & valid.unsqueeze(-1)).sum(1)
        else:
            hit = torch.zeros(index.shape[0], width, dtype=torch.int64, device=index.device).scatter_add_(
                -1, safe, valid.long())
        return hit.clamp_max(1).to(torch.uint8)

    def keep_selection(self, row: int, mask: torch.Tensor, name: str = "selection") -> None:
        """Copy (never reference) a call's `selection` (or `prediction`) for the next layer; eager calls grow it."""
        kept, n = getattr(self, name), mask.shape[0]
        if n > kept.shape[1]:
            if torch.compiler.is_compiling() or _capturing():  # cannot grow here: the next layer pairs nothing
                getattr(self, f"{name}_tokens")[row].fill_(-1)
                return
            grown = torch.zeros(kept.shape[0], n, kept.shape[2], dtype=torch.uint8, device=kept.device)
            grown[:, : kept.shape[1]] = kept
            setattr(self, name, grown)
            mark_static(grown)
        getattr(self, name)[row, :n].copy_(mask)
        getattr(self, f"{name}_tokens")[row].fill_(n)

    def add_transition(self, row: int, mask: torch.Tensor, dense: bool) -> None:
        """Pair row `row`'s kept selection (the previous MoE layer's last call) with `mask`, the next layer's call on
        the same tokens: transition counts prevᵀ·mask and the per-token Jaccard sum, added only where the kept call
        had as many tokens. On a split model `mask` is copied to this row's device at each device boundary (device to
        device, no host sync): the recorder's one cross-device copy, made only with transitions on."""
        n = mask.shape[0]
        if n > self.selection.shape[1]:
            return
        before, after = self.selection[row, :n].float(), mask.to(self.selection.device).float()
        same = self.selection_tokens[row] == n
        counts = torch.mm(before.t(), after).round().long() * same  # [V, V]
        union = ((before + after) > 0).sum(-1)
        jaccard = torch.where(union > 0, (before * after).sum(-1) / union.clamp_min(1), 0.0)
        sums = torch.stack([jaccard.sum(dtype=torch.float64), (union > 0).sum().double()]) * same
        rows = slice(row, row + 1)
        self._add("transitions", rows, counts.flatten().unsqueeze(0), dense)
        self._add("jaccard", rows, sums.unsqueeze(0), dense)


class RoutingRecorder:
    """Per-layer, per-phase routing statistics of `num_layers` MoE layers (see the module docstring).

    router_width: the router's output width per layer (or one for all); num_experts: real (computing) experts per
    layer, indices >= this are not counted; devices: each layer's device (default CPU); vocab_size: the token ids
    counted with analyses.vocab (0..vocab_size - 1); phases: labels known up front (more can be added with set_phase,
    which reallocates the accumulators once).
    """

    def __init__(self, num_layers: int, router_width: int | list[int], num_experts: list[int], scoring: Scoring,
                 capacity: int | None = None, devices: list[torch.device] | None = None, vocab_size: int = 0,
                 phases: tuple[str, ...] = ("prefill", "decode"), analyses: Analyses | Iterable[str] | None = None):
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
        traced = torch.compiler.is_compiling() or _capturing()
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
    def read_phases(self) -> dict[str, dict[str, np.ndarray]]:
        """Host copies of every accumulator, per phase: {phase: {name: [L, entries]}} (one read of the device)."""
        self.flush()
        out: dict[str, np.ndarray] = {}
        for group in self.groups:  # groups of narrower routers are padded with zeros to the widest
            for name, values in group.read().items():
                if name not in out:
                    full = [max(g.shapes()[name][d] for g in self.groups) for d in range(values.ndim - 2)]
                    out[name] = np.zeros((self.num_layers, len(self.phases), *full), values.dtype)
                out[name][(group.positions, slice(None), *(slice(0, n) for n in values.shape[2:]))] = values
        factors = np.array(self.analyses.capacity_factors, dtype=np.float64)
        return {phase: {**{name: v[:, i] for name, v in out.items()}, "capacity_factors": factors}
                for i, phase in enumerate(self.phases)}

    def snapshot(self, phase: str | None = None) -> dict[str, np.ndarray]:
        """Host copies of the accumulators, [L, ...] per layer: one phase, or summed over phases (the one sync)."""
        phases = self.read_phases()
        if phase is not None:
            return phases[phase]
        first = next(iter(phases.values()))
        return {name: first[name] if name == "capacity_factors" else sum(values[name] for values in phases.values())
                for name in first}

    def tokens_by_phase(self) -> dict[str, list[int]]:
        """Tokens seen per phase and layer: the k histogram sums to them."""
        return {phase: [int(v) for v in values["k_hist"].sum(-1)] for phase, values in self.read_phases().items()}

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
