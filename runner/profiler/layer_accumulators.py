"""The accumulators of the MoE layers that share one device and router width (LayerAccumulators): flat registered
buffers per phase, updated in place by one call's routing (the fused kernel on CUDA, torch ops elsewhere), read back
as host arrays. The recorder that owns them, stages eager calls and reads them out: accumulators.py."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from handlers.base import Scoring

from .analysis_set import Analyses
from . import fused
from .metrics import SUMS, boundary_margin, router_probs, top1_and_margin
from .upstream import mark_static
from . import lookahead, vocab


def capturing() -> bool:
    """True while a CUDA graph is being captured on the current stream (hooks run once, at capture)."""
    return torch.cuda.is_available() and torch.cuda.is_current_streamcapturing()


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

    def read(self, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Host copies shaped [L, P, ...] (the one sync): every accumulator, or those `names`."""
        L, P = len(self.positions), self.phases
        out = {}
        for name, shape in self.shapes().items():
            if names is not None and name not in names:
                continue
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
            if torch.compiler.is_compiling() or capturing():  # cannot grow here: the next layer pairs nothing
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
