"""What the rest of the forward is made of, as data: how an attention module is recognised and where its sizes are,
what a sparse-attention indexer is, and the architectures whose non-MoE parts the analytic whole-forward count does not cover (each with why).

The analytic whole forward (runner/profiler/cost_model.py) counts every nn.Linear outside the MoE layers once per
token, the LM head over the positions computed, softmax(Q K^T) V of every attention module, the scores of every
sparse-attention indexer, every nn.Conv1d (short and causal convolutions) and a Mamba-1 scan's output matmul. A
mixer that is none of these (a Mamba-2 chunked scan, linear or lightning attention, relative position terms,
attention experts) is not counted: those architectures are listed here with `exact=false`.
"""
from __future__ import annotations

# An attention module has all of these attributes (transformers 5's attention classes set them in __init__).
ATTENTION_MARKERS = ("scaling", "layer_idx")
# Its sizes, first attribute present wins; the query heads fall back to the config's `num_attention_heads`.
ATTENTION_QK_DIM = ("qk_head_dim", "head_dim")  # MLA: qk_nope_head_dim + qk_rope_head_dim
ATTENTION_V_DIM = ("v_head_dim", "head_dim")
ATTENTION_HEADS = ("num_heads", "num_attention_heads")
ATTENTION_HEADS_CONFIG = "num_attention_heads"
# The K/V heads it caches: the module's own count where it has one (jetmoe's attention experts share
# `num_key_value_heads` K/V heads while `num_key_value_groups` is 1), else query heads / `num_key_value_groups`.
ATTENTION_KV_HEADS = ("num_key_value_heads", "num_kv_heads")
ATTENTION_KV_GROUPS = "num_key_value_groups"
# Multi-head latent attention (DeepSeek-V2/V3 and kin): the cache holds one single-head latent per token, the
# compressed KV (`kv_lora_rank`) and the shared rotary key (`qk_rope_head_dim`), and every step re-runs the up-projection
# `kv_b_proj` over every cached position to rebuild K and V (so its cost grows with the context, not per new token).
LATENT_RANK = "kv_lora_rank"
LATENT_ROPE = "qk_rope_head_dim"
LATENT_EXPAND = "kv_b_proj"
# A sparse-attention indexer (DeepSeek-V3.2 DSA and kin) scores every (query, key) pair with its own heads, then sums
# them with per-head weights: an indexer module has these attributes (its heads, its head size).
INDEXER_MARKERS = ("index_topk",)
INDEXER_HEADS = ("n_heads",)
INDEXER_DIM = ("head_dim",)  # it caches one key of this size per token (single head)
# A Mamba (v1) mixer's selective scan reads its output as state @ C per token, a [D, N] x [N] matmul: the module has
# `time_step_rank` (Mamba-2 mixers do not), its inner width D and its state size N.
SCAN_MARKERS = ("time_step_rank",)
SCAN_WIDTH = "intermediate_size"
SCAN_STATE = "ssm_state_size"
# A cached decode step of a causal conv1d (transformers' causal_conv1d_update) convolves its conv state, the last
# kernel-size inputs, with the new token, unpadded: kernel + 1 - (kernel - 1) = 2 output positions, the last kept.
CONV_DECODE_POSITIONS = 2

_SSM = "state-space (Mamba-2) mixers: their chunked scan is not counted"
_LINEAR = "linear-attention mixers: their chunked recurrence is not counted"
_HYPER = "hyper-connection mixing"

# model_type -> why its whole-forward analytic count is not exact (the MoE-layer count can still be exact).
NOT_EXACT: dict[str, str] = {
    "granitemoehybrid": _SSM,
    "nemotron_h": _SSM,
    "bailing_hybrid": _LINEAR,
    "kimi_linear": _LINEAR,
    "lara_mini": _LINEAR,
    "qwen3_next": _LINEAR,
    "qwen3_5_moe_text": _LINEAR,
    "qwen4_exp_text": _LINEAR + "; so are its indexed-attention scores",
    "minimax": "lightning (linear) attention layers are not counted",
    "hy_v4": f"{_HYPER} is not counted",
    "deepseek_v4": f"its compressed attention and {_HYPER} are not counted",
    "inkling_text": "relative-position attention terms are not counted",
    "inkling2_text": "relative-position attention terms are not counted",
    "inkling2_loop_text": "relative-position attention terms and the looped layers' gates are not counted",
    "jetmoe": "mixture-of-attention experts are not counted",
    "kolibri1_1": "its token indexer's pooled, compressed scores are not counted",
    "zaya": "its MLP router and attention extras are not counted",
    "doge": "dynamic-mask attention and product-key experts are not modelled",
}
