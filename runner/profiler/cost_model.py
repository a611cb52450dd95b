"""What the whole forward costs: analytic FLOPs for given shapes (every part, not only the MoE layers), the bytes of
parameters and KV cache read per token, and the parameter counts under the conventions papers use.

FLOPs convention (FlopCounterMode's, as for the MoE layers): 2 FLOPs per multiply-accumulate of a matmul, nothing
else counts (embeddings, norms, activations, softmax, rotary: 0). A forward of `batch` sequences of `seq_q` query
tokens against `seq_k` keys (seq_k = seq_q without a cache; the cache's length when decoding) costs
    dense       2 * in * out per token for every nn.Linear outside the MoE layers and the LM head
    indexer     2 * batch * seq_q * seq_k * H_i * (d_i + 1) per sparse-attention indexer (DSA: per-head scores, then
                their weighted sum over its H_i heads)
    attention   2 * batch * Hq * seq_q * seq_k * (d_qk + d_v) per attention module (QK^T and PV over the full score
                matrix: what eager and SDPA compute, a sliding window or a causal mask included)
    conv        2 * batch * L_out * K * C_out * C_in / groups per nn.Conv1d (L_out = seq_q + 2 * pad - dil * (K - 1));
                0 for a cached step, which updates its conv state elementwise
    scan        2 * D * N per token per Mamba-1 mixer (its output, state @ C)
    MoE         the MoE layers' own per-token count (cost.py), analytic at k or routed
    LM head     2 * H * V per position whose logits are computed (`logits_to_keep`)
The causal variant halves the attention term as a causal kernel would skip it: seq_k * seq_q -> the pairs (i, j) with
j <= i + (seq_k - seq_q). Architecture knowledge (what an attention module is, which architectures have other mixers)
is in handlers/forward.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from handlers import forward as arch

from .scan import MoELayer, text_config


@dataclass(frozen=True)
class Attention:
    """One attention module's sizes."""

    name: str
    heads: int  # query heads
    dim_qk: int
    dim_v: int
    kv_heads: int
    window: int | None  # sliding window of its cache layer (KV cache bound), None for full attention
    latent: int = 0  # MLA: the single-head latent cached per token (kv_lora_rank + rope dims); 0 for plain K/V
    expand: int = 0  # MLA: FLOPs per cached position of the latent's up-projection, re-run over every key each step

    @property
    def cached_width(self) -> int:
        """Elements the cache holds per token: MLA's latent, else K and V of every K/V head."""
        return self.latent or self.kv_heads * (self.dim_qk + self.dim_v)

    def step_keys(self, context: int, slots: int | None = None) -> int:
        """Keys one cached decode step attends over (and MLA re-expands): the real cache's, `context` tokens after the
        step in a dynamic cache, the whole allocation of a static one of `slots` slots; a sliding layer's window (a
        dynamic one holds window - 1 and adds the new token, a static one holds the window)."""
        length = slots if slots else context
        return min(length, self.window) if self.window else length

    def held(self, context: int, slots: int | None = None) -> int:
        """Tokens its cache layer holds after a decode step (a dynamic sliding layer keeps the last window - 1)."""
        if slots:
            return min(slots, self.window) if self.window else slots
        return min(context, self.window - 1) if self.window else context


@dataclass
class ForwardCost:
    """The non-MoE parts of one forward, from the modules' shapes (works on the meta device)."""

    dense_per_token: int  # Linears outside the MoE layers and the LM head, per token (MLA's kv_b_proj left out)
    head_per_position: int  # the LM head, per position whose logits are computed
    attention: list[Attention]
    indexers: list[tuple[int, int]]  # (heads, head size) of each sparse-attention indexer
    convs: list[tuple[int, int, int, int]]  # nn.Conv1d: (out channels x in channels per group, kernel, padding, dilation)
    scan_per_token: int  # Mamba-1 scans: 2 * D * N per token each
    exact: bool
    note: str
    input_embedding: nn.Module | None = field(default=None, repr=False)

    def attention_flops(self, batch: int, seq_q: int, seq_k: int | None = None, causal: bool = False) -> int:
        """softmax(Q K^T) V of every attention module over the full score matrix."""
        seq_k = seq_q if seq_k is None else seq_k
        pairs = causal_pairs(seq_q, seq_k) if causal else seq_q * seq_k
        return sum(2 * batch * a.heads * pairs * (a.dim_qk + a.dim_v) for a in self.attention)

    def expansion_flops(self, batch: int, seq_k: int) -> int:
        """MLA's up-projection of the cached latent into K and V, run at every one of the seq_k key positions."""
        return sum(batch * seq_k * a.expand for a in self.attention)

    def indexer_flops(self, batch: int, seq_q: int, seq_k: int | None = None) -> int:
        """Scores q_h . k of every (query, key) pair and head, then their weighted sum over the heads."""
        seq_k = seq_q if seq_k is None else seq_k
        return sum(2 * batch * seq_q * seq_k * heads * (dim + 1) for heads, dim in self.indexers)

    def conv_flops(self, batch: int, seq_q: int, seq_k: int | None = None) -> int:
        """Convolutions over the sequence (stride 1): 2 * B * L_out * K * C_out * C_in/groups, L_out = S + 2 * pad -
        dilation * (K - 1). A cached step (seq_k > seq_q) convolves the conv state and the new token instead:
        arch.CONV_DECODE_POSITIONS outputs."""
        cached = seq_k is not None and seq_k != seq_q
        return sum(2 * batch * (arch.CONV_DECODE_POSITIONS if cached else seq_q + 2 * pad - dil * (k - 1)) * k * channels
                   for channels, k, pad, dil in self.convs)

    def flops(self, batch: int, seq_q: int, seq_k: int | None = None, logits_positions: int | None = None,
              moe_per_token: float = 0.0, causal: bool = False) -> float:
        """Whole-forward FLOPs of `batch` x `seq_q` tokens; logits_positions: per sequence (default: all). Every
        attention module sees all seq_k keys (a forward without a cache: seq_k = seq_q); a decode step through a
        real cache is `decode_flops`."""
        tokens = batch * seq_q
        positions = seq_q if logits_positions is None else min(logits_positions, seq_q)
        return (tokens * (self.dense_per_token + moe_per_token + self.scan_per_token)
                + batch * positions * self.head_per_position + self.attention_flops(batch, seq_q, seq_k, causal)
                + self.expansion_flops(batch, seq_q if seq_k is None else seq_k)
                + self.indexer_flops(batch, seq_q, seq_k) + self.conv_flops(batch, seq_q, seq_k))

    def per_token(self, batch: int, seq_q: int, seq_k: int | None = None, moe_per_token: float = 0.0,
                  causal: bool = False) -> float:
        return self.flops(batch, seq_q, seq_k, moe_per_token=moe_per_token, causal=causal) / (batch * seq_q)

    def decode_flops(self, batch: int, context: int, slots: int | None = None, moe_per_token: float = 0.0) -> float:
        """One cached decode step, one new token per sequence, `context` tokens per sequence after it; `slots`: a
        static cache of that many slots (attended over whole), None: a dynamic cache. Each attention module attends
        over (and MLA re-expands) its cache layer's keys (`Attention.step_keys`)."""
        attention = sum(2 * batch * a.heads * a.step_keys(context, slots) * (a.dim_qk + a.dim_v)
                        + batch * a.step_keys(context, slots) * a.expand for a in self.attention)
        keys = slots or context
        return (batch * (self.dense_per_token + moe_per_token + self.scan_per_token + self.head_per_position)
                + attention + self.indexer_flops(batch, 1, keys) + self.conv_flops(batch, 1, keys))

    def decode_per_token(self, batch: int, context: int, slots: int | None = None, moe_per_token: float = 0.0) -> float:
        return self.decode_flops(batch, context, slots, moe_per_token) / batch

    def kv_cache_bytes(self, batch: int, context: int, element_bytes: int, slots: int | None = None) -> int:
        """Bytes of the keys and values (MLA: latents; indexers: their keys) the cache holds after a decode step that
        leaves `context` tokens per sequence (`slots`: a static cache of that many slots)."""
        held = sum(a.held(context, slots) * a.cached_width for a in self.attention)
        held += sum(dim for _, dim in self.indexers) * (slots or context)
        return batch * held * element_bytes

    def kv_bytes_per_token(self, context: int, element_bytes: int, slots: int | None = None) -> float:
        """KV-cache bytes per token of context (`kv_cache_bytes` of one sequence / context)."""
        return self.kv_cache_bytes(1, context, element_bytes, slots) / max(context, 1)


def causal_pairs(seq_q: int, seq_k: int) -> int:
    """(query, key) pairs a causal mask keeps when the seq_q queries are the last of seq_k positions."""
    return seq_q * (seq_k - seq_q) + seq_q * (seq_q + 1) // 2


def _first_int(module: nn.Module, names: Iterable[str]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _cache_windows(config) -> dict[int, int]:
    """Cache layer index -> sliding window, as transformers' own DynamicCache lays the cache out for this config
    (sliding and chunked layers keep a window; which layers are which is the config's business)."""
    from transformers import DynamicCache

    try:
        layers = DynamicCache(config=config).layers
    except (KeyError, ValueError, TypeError, AttributeError):  # a layout DynamicCache cannot build: its own cache
        return {}
    return {i: layer.sliding_window for i, layer in enumerate(layers)
            if isinstance(getattr(layer, "sliding_window", None), int) and layer.sliding_window > 0}


def attention_modules(model: nn.Module) -> list[Attention]:
    config = text_config(model)
    windows = _cache_windows(config)
    found = []
    for name, module in model.named_modules():
        if not all(hasattr(module, marker) for marker in arch.ATTENTION_MARKERS):
            continue
        dim_qk = _first_int(module, arch.ATTENTION_QK_DIM)
        if dim_qk is None:
            continue
        heads = _first_int(module, arch.ATTENTION_HEADS) or getattr(config, arch.ATTENTION_HEADS_CONFIG)
        kv_heads = (_first_int(module, arch.ATTENTION_KV_HEADS)
                    or max(heads // (_first_int(module, (arch.ATTENTION_KV_GROUPS,)) or 1), 1))
        window = windows.get(module.layer_idx) if windows else getattr(module, "sliding_window", None)
        expand = latent_expansion(module)
        found.append(Attention(
            name, heads, dim_qk, _first_int(module, arch.ATTENTION_V_DIM) or dim_qk, kv_heads,
            window if isinstance(window, int) and window > 0 else None,
            latent=_first_int(module, (arch.LATENT_RANK,)) + (_first_int(module, (arch.LATENT_ROPE,)) or 0)
            if expand is not None else 0,
            expand=2 * expand.in_features * expand.out_features if expand is not None else 0))
    return found


def latent_expansion(module: nn.Module) -> nn.Linear | None:
    """An MLA attention module's up-projection of its cached latent (None for any other module): counted per cached
    position with the attention, not per token with the dense layers."""
    expand = getattr(module, arch.LATENT_EXPAND, None)
    is_attention = all(hasattr(module, marker) for marker in arch.ATTENTION_MARKERS)
    return expand if is_attention and isinstance(expand, nn.Linear) and _first_int(module, (arch.LATENT_RANK,)) else None


def indexer_modules(model: nn.Module) -> list[tuple[int, int]]:
    return [(_first_int(m, arch.INDEXER_HEADS), _first_int(m, arch.INDEXER_DIM)) for m in model.modules()
            if all(hasattr(m, marker) for marker in arch.INDEXER_MARKERS)
            and _first_int(m, arch.INDEXER_HEADS) and _first_int(m, arch.INDEXER_DIM)]


def conv_modules(model: nn.Module, inside: set[int]) -> list[tuple[int, int, int, int]]:
    return [(m.out_channels * m.in_channels // m.groups, m.kernel_size[0], int(m.padding[0]), m.dilation[0])
            for m in model.modules() if isinstance(m, nn.Conv1d) and id(m) not in inside]


def scan_flops_per_token(model: nn.Module) -> int:
    return sum(2 * getattr(m, arch.SCAN_WIDTH) * getattr(m, arch.SCAN_STATE) for m in model.modules()
               if all(hasattr(m, marker) for marker in arch.SCAN_MARKERS))


def moe_module_ids(layers: list[MoELayer]) -> set[int]:
    return {id(sub) for layer in layers for module in layer.measured_modules() for sub in module.modules()}


def forward_cost(model: nn.Module, layers: list[MoELayer]) -> ForwardCost:
    inside = moe_module_ids(layers)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    outside = inside | {id(expand) for m in model.modules() if (expand := latent_expansion(m)) is not None}
    dense = sum(2 * m.in_features * m.out_features for m in model.modules()
                if isinstance(m, nn.Linear) and id(m) not in outside and m is not head)
    head_flops = 2 * head.in_features * head.out_features if isinstance(head, nn.Linear) else 0
    model_type = getattr(text_config(model), "model_type", None)
    note = arch.NOT_EXACT.get(model_type, "")
    moe_exact = all(layer.handler.exact for layer in layers)
    if not moe_exact:
        note = "; ".join(filter(None, [note, "the MoE layers' count is not exact (see their note)"]))
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return ForwardCost(dense, head_flops, attention_modules(model), indexer_modules(model), conv_modules(model, inside),
                       scan_flops_per_token(model), exact=moe_exact and not arch.NOT_EXACT.get(model_type),
                       note=note, input_embedding=embedding)


# -- parameters and bytes -------------------------------------------------------------------------------------------
def _bytes(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def embedding_params(model: nn.Module) -> int:
    """Parameters of the input embedding table(s) that are not also the LM head (tied weights count once, as the head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding)
               for p in m.parameters(recurse=False) if id(p) not in head_ids)


@dataclass
class ByteCounts:
    """Parameter bytes of one forward, split so the activated experts can be counted per batch."""

    dense: int  # every parameter outside the routed experts and the input embedding tables
    expert: list[int]  # per MoE layer: bytes of one routed expert

    def per_forward(self, unique_experts: list[float]) -> list[float]:
        """Bytes read per MoE layer for that many distinct activated experts (each read once per forward)."""
        return [n * b for n, b in zip(unique_experts, self.expert)]


def byte_counts(model: nn.Module, layers: list[MoELayer]) -> ByteCounts:
    expert_ids = {id(p) for layer in layers for p in layer.experts.parameters()}
    embed_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed_ids -= {id(p) for p in head.parameters()} if head is not None else set()
    dense = _bytes(p for p in model.parameters() if id(p) not in expert_ids and id(p) not in embed_ids)
    return ByteCounts(dense, [_bytes(layer.experts.parameters()) // max(layer.num_experts, 1) for layer in layers])


def expected_unique(loads: Iterable[float], tokens: float, batch: int) -> float:
    """Expected distinct experts chosen by `batch` tokens drawn independently with the per-expert loads observed over
    `tokens` tokens (P(a token picks e) = load_e / tokens)."""
    if tokens <= 0:
        return 0.0
    return float(sum(1 - (1 - min(load / tokens, 1.0)) ** batch for load in loads))
