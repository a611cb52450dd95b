"""Tiny, fast, random-init configs for every MoE causal-LM architecture in transformers 5.x.

Sizes follow the probe config of the MoE survey (shared/research/transformers-moe-survey.md, sections 0/2/6):
hidden 64, 4 layers, 4 heads / 2 kv heads, head_dim 16, vocab 128, E=8 routed experts, top-k 2 (llama4_text, zaya: 1),
``intermediate_size=96`` (dense width, or expert width for archs without ``moe_intermediate_size``),
``moe_intermediate_size=32``, shared-expert sizes 48, one leading dense layer where the arch has such a knob.

``_BASE`` is applied only for fields the config class actually declares (so aliases in ``attribute_map`` such as
deepseek_v4's ``intermediate_size -> moe_intermediate_size`` are never hit by accident); ``_PER_TYPE`` entries are
passed verbatim (aliases allowed). ``**overrides`` are applied last; the canonical names ``num_experts_per_tok`` /
``num_experts`` / ``num_local_experts`` are translated to the arch's own field where the config has no such name
or alias (aria_text, gemma4_text, dbrx's ``ffn_config``, deepseek-style ``n_routed_experts``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import torch
import transformers
from transformers import AutoConfig

MOE_MODEL_TYPES: list[str] = [
    "olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt_oss", "granitemoe",
    "granitemoeshared", "phimoe", "dbrx", "jamba", "llama4_text", "minimax", "hunyuan_v1_moe", "ernie4_5_moe",
    "glm4_moe", "dots1", "flex_olmo", "bailing_hybrid", "afmoe", "aria_text", "axk1", "axk2", "beam", "cohere2_moe",
    "deepseek_v32", "deepseek_v4", "doge", "dots3_note_text", "exaone_moe", "flint", "gemma4_text", "glm4_moe_lite",
    "glm_moe_dsa", "granitemoe_swa", "granitemoehybrid", "hy_v3", "hy_v4", "inkling_text", "inkling2_text",
    "inkling2_loop_text", "jetmoe", "kimi_linear", "kolibri1", "laguna", "lara_mini", "lfm2_moe", "longcat_flash",
    "mellum", "mimo_v2_flash", "minimax_m2", "minimax_m3_vl_text", "mistral4", "nemotron_h", "qwen3_5_moe_text",
    "qwen3_next", "qwen4_exp_text", "sarvam_moe", "sarvam_mla", "solar_open", "zaya",
    # new in transformers 5.25
    "ergo", "kolibri1_1", "minicpm5_moe", "param2moe",
]

NUM_EXPERTS = 8
TOP_K = 2

# Applied only where the config class declares the field.
_BASE: dict = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    intermediate_size=96,
    moe_intermediate_size=32,
    initializer_range=0.02,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    # routed experts / top-k under every spelling
    num_experts=NUM_EXPERTS,
    num_local_experts=NUM_EXPERTS,
    n_routed_experts=NUM_EXPERTS,
    moe_num_experts=NUM_EXPERTS,
    num_experts_per_tok=TOP_K,
    moe_topk=TOP_K,
    moe_k=TOP_K,
    top_k_experts=TOP_K,
    # shared experts
    n_shared_experts=1,
    num_shared_experts=1,
    moe_num_shared_experts=1,
    shared_expert_intermediate_size=48,
    shared_experts_intermediate_size=48,
    shared_intermediate_size=48,
    moe_shared_expert_intermediate_size=48,
    # at least one dense layer
    first_k_dense_replace=1,
    mlp_only_layers=[0],
    num_dense_layers=1,
    # DeepSeek-style group-limited routing
    n_group=4,
    topk_group=2,
    # MTP heads off
    num_nextn_predict_layers=0,
    # small windows so sliding attention is actually exercised on 16 tokens
    sliding_window=8,
    # no fused CUDA kernels on CPU
    use_mamba_kernels=False,
)

# Multi-head latent attention (DeepSeek-V2/V3 family). No GQA: kv heads == heads (eager/sdpa would repeat_kv).
_MLA = dict(
    kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, num_key_value_heads=4
)
# DeepSeek sparse-attention indexer.
_INDEXER = dict(index_n_heads=2, index_head_dim=16, index_topk=8)
# Gated-DeltaNet linear attention (Qwen3-Next family).
_GDN = dict(linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4)

_PER_TYPE: dict[str, dict] = {
    "deepseek_v2": dict(**_MLA),
    "deepseek_v3": dict(**_MLA),
    "dbrx": dict(
        d_model=64, n_heads=4, n_layers=4, max_seq_len=128,
        # DbrxAttention reads attn_config.rope_theta and clamps qkv with clip_qkv unconditionally
        attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
        ffn_config=dict(ffn_hidden_size=96, moe_num_experts=NUM_EXPERTS, moe_top_k=TOP_K),
    ),
    # attention on layers 1,3; MoE on layers 1,3 (expert_layer_period=2, offset=1 by default)
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, mamba_expand=2),
    # MoE on layers 1,3; dense layers use intermediate_size_mlp
    "llama4_text": dict(num_experts_per_tok=1, interleave_moe_layer_step=2, intermediate_size_mlp=96,
                        attention_chunk_size=8),
    "minimax": dict(block_size=8),
    "bailing_hybrid": dict(**_MLA, layer_group_size=2),
    "afmoe": dict(global_attn_every_n_layers=2),
    "axk1": dict(**_MLA),
    "axk2": dict(**_MLA, **_INDEXER, gated_norm_rank=4),
    "beam": dict(mlp_layer_types=["dense", "sparse", "sparse", "sparse"]),
    "cohere2_moe": dict(prefix_dense_intermediate_size=96),
    "deepseek_v32": dict(**_MLA, **_INDEXER),
    "deepseek_v4": dict(q_lora_rank=32, o_groups=2, o_lora_rank=16, **_INDEXER, hc_mult=2, hc_sinkhorn_iters=3),
    # product-key experts: E must be a perfect square (num_keys = sqrt(E))
    "doge": dict(is_moe=True, num_experts=16, keep_window_size=8),
    # its sliding-window layers take their own attention sizes (swa_*, 64 heads of 256 by default: 77M parameters)
    "dots3_note_text": dict(**_MLA, **_INDEXER, swa_num_attention_heads=4, swa_num_key_value_heads=4,
                            swa_q_lora_rank=32, swa_kv_lora_rank=16, swa_head_dim=16, swa_qk_nope_head_dim=8,
                            swa_v_head_dim=16),
    "gemma4_text": dict(enable_moe_block=True, vocab_size_per_layer_input=128, hidden_size_per_layer_input=16),
    "glm4_moe_lite": dict(**_MLA),
    "glm_moe_dsa": dict(**_MLA, **_INDEXER),
    "granitemoehybrid": dict(
        layer_types=["mamba", "attention", "mamba", "attention"],
        mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=8, mamba_d_head=32, mamba_chunk_size=16,
    ),
    "hy_v4": dict(**_MLA, **_INDEXER, hc_mult=2),
    "inkling_text": dict(
        unpadded_vocab_size=128, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16,
        sliding_window_size=8, d_rel=4, rel_extent=32, local_layer_ids=[0, 2],
    ),
    "inkling2_text": dict(
        unpadded_vocab_size=128, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16,
        sliding_window_size=8, d_rel=4, rel_extent=32, n_layers_per_attn_res_block=2,
    ),
    "inkling2_loop_text": dict(
        unpadded_vocab_size=128, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16,
        sliding_window_size=8, d_rel=4, rel_extent=32, n_layers_per_attn_res_block=1,
        loop_layer_index_start=1, loop_layer_index_end=3, loop_num_passes=2, loop_gate_rank=8,
    ),
    # JetMoE mixture-of-attention: num_attention_heads = num_key_value_heads * top-k
    "jetmoe": dict(kv_channels=16),
    # sliding layers 0, 2; indexed-attention layers 1, 3 (layer 1 holds the indexer, layer 3 reads its pool)
    "kolibri1_1": dict(
        layer_types=["sliding_attention", "indexed_attention", "sliding_attention", "indexed_attention"],
        index_num_heads=2, index_topk=4, index_pool_size=8, index_compression=2, index_num_local_tokens=2,
        index_num_sink_tokens=1, mlp_only_intermediate_size=96,
    ),
    "ergo": dict(first_dense_intermediate_size=96),
    "kimi_linear": dict(
        **_MLA, linear_head_dim=16, linear_num_heads=4,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    ),
    "lara_mini": dict(**_GDN),
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"]),
    # longcat: each of its `num_layers` layers has 2 attention + 2 dense MLP + 1 MoE sub-blocks
    "longcat_flash": dict(
        num_layers=2, ffn_hidden_size=96, expert_ffn_hidden_size=32, zero_expert_num=2, **_MLA,
        head_dim=8,  # rotary dim == qk_rope_head_dim
    ),
    "mimo_v2_flash": dict(v_head_dim=16),
    "minimax_m3_vl_text": dict(
        dense_intermediate_size=96, rotary_dim=8,
        index_n_heads=2, index_head_dim=16, index_block_size=4, index_topk_blocks=2,
    ),
    "mistral4": dict(**_MLA),
    "nemotron_h": dict(
        layers_block_type=["linear_attention", "moe", "full_attention", "moe"],
        ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=1, chunk_size=16,
    ),
    "qwen3_5_moe_text": dict(**_GDN),
    "qwen3_next": dict(**_GDN),
    # layer 3 is an "indexed_attention" layer, which needs the QSA indexer fields
    "qwen4_exp_text": dict(
        **_GDN, hc_count=2, hc_lowrank=8,
        indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=8, indexer_compress_ratio=2,
    ),
    "sarvam_mla": dict(**_MLA),
    "zaya": dict(num_experts_per_tok=1, router_hidden_size=32),
}

# CausalLM classes not reachable through AutoModelForCausalLM.
_CAUSAL_LM_CLASS: dict[str, str] = {
    "mistral4": "Mistral4ForCausalLM",
}


def available_model_types() -> list[str]:
    """The subset of MOE_MODEL_TYPES known to the installed transformers."""
    from transformers import CONFIG_MAPPING

    return [t for t in MOE_MODEL_TYPES if t in CONFIG_MAPPING]


def _declared_fields(config_cls) -> set[str]:
    if dataclasses.is_dataclass(config_cls):
        return {f.name for f in dataclasses.fields(config_cls)}
    return set(inspect.signature(config_cls.__init__).parameters) - {"self", "kwargs"}


# Canonical override names -> each arch's own spelling, used when the config neither declares nor aliases the
# canonical name (e.g. aria_text `moe_topk`, gemma4_text `top_k_experts`, deepseek_v3 `n_routed_experts`).
_CANONICAL = {
    "num_experts_per_tok": ("num_experts_per_tok", "moe_topk", "moe_k", "top_k_experts"),
    "num_experts": ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"),
    "num_local_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
}
_DBRX_FFN_KEYS = {"num_experts_per_tok": "moe_top_k", "num_experts": "moe_num_experts",
                  "num_local_experts": "moe_num_experts", "intermediate_size": "ffn_hidden_size"}


def _canonicalize(model_type: str, config_cls, overrides: dict, kwargs: dict) -> dict:
    known = _declared_fields(config_cls) | set(getattr(config_cls, "attribute_map", {}))
    out = {}
    for key, value in overrides.items():
        if model_type == "dbrx" and key in _DBRX_FFN_KEYS:
            ffn = dict(out.get("ffn_config", kwargs.get("ffn_config") or {}))
            ffn[_DBRX_FFN_KEYS[key]] = value
            out["ffn_config"] = ffn
        elif key in _CANONICAL and key not in known:
            target = next((k for k in _CANONICAL[key] if k in known), key)
            out[target] = value
        else:
            out[key] = value
    return out


def tiny_config(model_type: str, **overrides) -> transformers.PretrainedConfig:
    from transformers import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[model_type]
    fields = _declared_fields(config_cls)
    kwargs = {k: v for k, v in _BASE.items() if k in fields}
    kwargs.update(_PER_TYPE.get(model_type, {}))
    kwargs.update(_canonicalize(model_type, config_cls, overrides, kwargs))
    return AutoConfig.for_model(model_type, **kwargs)


def _causal_lm_class(model_type: str, config) -> type:
    name = _CAUSAL_LM_CLASS.get(model_type)
    if name is None:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    module = importlib.import_module(type(config).__module__.replace(".configuration_", ".modeling_"))
    return getattr(module, name)


def supports_experts_implementation(model_type: str) -> bool:
    """False for archs whose experts are not ``@use_experts_implementation``-decorated (eager only)."""
    cfg = tiny_config(model_type)
    return _causal_lm_class(model_type, cfg)._can_set_experts_implementation()


# The archs whose experts have only their own eager forward (not `@use_experts_implementation`-decorated, so
# `experts_implementation="grouped_mm"` is ignored), and why. tests/unit/test_architectures.py checks that this is
# exactly the set for which supports_experts_implementation() is False on the installed transformers.
EAGER_ONLY_EXPERTS: dict[str, str] = {
    "dbrx": "DbrxExperts loop over 2-D concatenated w1/v1/w2 weights",
    "doge": "product-key retrieval over embedding experts (DogeCDMoE), no experts module",
    "jetmoe": "JetMoeParallelExperts take per-expert row counts, not (index, weight) pairs",
    "llama4_text": "Llama4TextExperts run one dense bmm over all experts",
}
TRANSFORMERS_RELEASE = tuple(int(v) for v in transformers.__version__.split(".")[:2])
# Eager-only before a release: model_type -> (the first release whose experts take experts_implementation, why before).
EAGER_ONLY_BEFORE: dict[str, tuple[tuple[int, int], str]] = {
    "longcat_flash": ((5, 25), "LongcatFlashExperts loop, with zero-computation identity experts"),
}
EAGER_ONLY_EXPERTS.update({t: why for t, (first, why) in EAGER_ONLY_BEFORE.items() if TRANSFORMERS_RELEASE < first})

# What older transformers releases do differently (the GPU machines run 5.17): model_type -> (the first release the
# tests know it to work as on 5.24, and what happens before it). Checked on 5.17 and 5.24.
BEFORE_RELEASE: dict[str, tuple[tuple[int, int], str]] = {
    "aria_text": ((5, 24), "eager-only experts (no experts_implementation, no sentinel opt-in): dynamic k is refused"),
    "doge": ((5, 24), "the tiny doge fails inside transformers' own forward (dropout() given a tuple)"),
    "longcat_flash": ((5, 24), "its router returns 2 outputs: the profiler refuses it with a ProfilerError"),
}


def older_release(model_type: str) -> str | None:
    """Why `model_type` behaves differently on the installed transformers, or None when it is as recent as the tests
    know (see BEFORE_RELEASE)."""
    first, why = BEFORE_RELEASE.get(model_type, ((0, 0), ""))
    return f"transformers {transformers.__version__} < {first[0]}.{first[1]}: {why}" if TRANSFORMERS_RELEASE < first else None


@torch.no_grad()
def _sanitize(model: torch.nn.Module, seed: int) -> None:
    """Replace any non-finite (uninitialised ``torch.empty``) floating param/buffer with N(0, 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or torch.isfinite(t).all():
            continue
        if "correction_bias" in name or name.endswith("expert_bias"):
            t.zero_()
        else:
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(t.dtype))


def build_tiny_model(
    model_type: str, seed: int = 0, experts_implementation: str | None = None, **overrides
) -> torch.nn.Module:
    """Random-init tiny CausalLM in eval mode, float32. ``experts_implementation`` is ignored (model stays on
    ``"eager"``) for archs whose experts cannot switch implementation, see ``supports_experts_implementation``."""
    cfg = tiny_config(model_type, **overrides)
    cls = _causal_lm_class(model_type, cfg)
    kwargs = {"dtype": torch.float32}
    if experts_implementation is not None and cls._can_set_experts_implementation():
        kwargs["experts_implementation"] = experts_implementation
    torch.manual_seed(seed)
    model = cls._from_config(cfg, **kwargs)
    _sanitize(model, seed)
    return model.float().eval()
