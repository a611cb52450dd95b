"""What the rest of the forward is made of, as data: how an attention module is recognised and where its sizes are,
what a sparse-attention indexer is, and the architectures whose non-MoE parts the analytic whole-forward count does not cover (each with why).

The analytic whole forward (runner/profiler/model_cost.py) counts every nn.Linear outside the MoE layers once per
token, the LM head over the positions computed, softmax(Q K^T) V of every attention module and the scores of every
sparse-attention indexer. A mixer that is none of these (a state-space scan, a convolution, linear or lightning
attention, relative position terms, attention experts) is not counted: those architectures are listed here with `exact=false`.
"""
from __future__ import annotations

# An attention module has all of these attributes (transformers 5's attention classes set them in __init__).
ATTENTION_MARKERS = ("scaling", "layer_idx")
# Its sizes, first attribute present wins; the query heads fall back to the config's `num_attention_heads`.
ATTENTION_QK_DIM = ("qk_head_dim", "head_dim")  # MLA: qk_nope_head_dim + qk_rope_head_dim
ATTENTION_V_DIM = ("v_head_dim", "head_dim")
ATTENTION_HEADS = ("num_heads", "num_attention_heads")
ATTENTION_HEADS_CONFIG = "num_attention_heads"
# A sparse-attention indexer (DeepSeek-V3.2 DSA and kin) scores every (query, key) pair with its own heads, then sums
# them with per-head weights: an indexer module has these attributes (its heads, its head size).
INDEXER_MARKERS = ("index_topk",)
INDEXER_HEADS = ("n_heads",)
INDEXER_DIM = ("head_dim",)

_SSM = "state-space (Mamba) mixers: their convolution and scan are not counted"
_LINEAR = "linear-attention mixers: their chunked recurrence and convolution are not counted"
_HYPER = "hyper-connection mixing"

# model_type -> why its whole-forward analytic count is not exact (the MoE-layer count can still be exact).
NOT_EXACT: dict[str, str] = {
    "jamba": _SSM,
    "granitemoehybrid": _SSM,
    "nemotron_h": _SSM,
    "bailing_hybrid": _LINEAR,
    "kimi_linear": _LINEAR,
    "lara_mini": _LINEAR,
    "qwen3_next": _LINEAR,
    "qwen3_5_moe_text": _LINEAR,
    "qwen4_exp_text": _LINEAR + "; so are its indexed-attention scores",
    "minimax": "lightning (linear) attention layers are not counted",
    "lfm2_moe": "short-convolution mixers are not counted",
    "hy_v4": f"{_HYPER} is not counted",
    "deepseek_v4": f"its compressed attention and {_HYPER} are not counted",
    "inkling_text": "relative-position attention terms are not counted",
    "inkling2_text": "relative-position attention terms are not counted",
    "inkling2_loop_text": "relative-position attention terms and the looped layers' gates are not counted",
    "jetmoe": "mixture-of-attention experts are not counted",
    "zaya": "its MLP router and attention extras are not counted",
    "doge": "dynamic-mask attention and product-key experts are not modelled",
}
