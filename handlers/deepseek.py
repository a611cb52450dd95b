"""DeepSeek-style routers: sigmoid (or softmax) scores, selection bias, optional group limits, shared experts."""
from .base import Handler

_N_SHARED = (("moe_intermediate_size", "n_shared_experts"),)
_NUM_SHARED = (("moe_intermediate_size", "num_shared_experts"),)

_SIGMOID_GROUPED = Handler(
    ("<deepseek>",), shared_expert_dim=_N_SHARED, scoring="sigmoid", group_limited=True,
)

ENTRIES = [
    _SIGMOID_GROUPED.with_(model_types=(mt,))
    for mt in (
        "deepseek_v3", "deepseek_v32", "sarvam_mla", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "sarvam_moe",
        "dots1", "kimi_linear", "bailing_hybrid", "axk1", "axk2", "hy_v4", "solar_open", "param2moe", "minicpm5_moe",
    )
] + [
    Handler(
        ("deepseek_v2",), shared_expert_dim=_N_SHARED, renormalize=False, group_limited=True,
        note="softmax scores x routed_scaling_factor, never renormalised",
    ),
    Handler(("mistral4",), shared_expert_dim=_N_SHARED, group_limited=True),
    Handler(("exaone_moe",), shared_expert_dim=_NUM_SHARED, scoring="sigmoid", group_limited=True),
    Handler(("afmoe",), shared_expert_dim=_NUM_SHARED, scoring="sigmoid", renormalize=True),
    Handler(("hy_v3",), shared_expert_dim=_NUM_SHARED, scoring="sigmoid", renormalize=True),
    Handler(("mimo_v2_flash",), scoring="sigmoid", group_limited=True),
    Handler(
        ("dots3_note_text",), shared_expert_dim=(("shared_experts_intermediate_size", "n_shared_experts"),),
        scoring="sigmoid", group_limited=True,
    ),
    Handler(("ernie4_5_moe",), shared_expert_dim=(("moe_intermediate_size", "moe_num_shared_experts"),)),
    Handler(
        ("deepseek_v4",), shared_expert_dim=("moe_intermediate_size",), scoring="sigmoid", renormalize=True,
        note="hash-routed layers take experts from a token-id table: their k cannot change",
    ),
    Handler(
        ("ergo",), shared_expert_dim=("shared_intermediate_size",), gated=False, shared_gated=False, scoring="sigmoid",
        renormalize=True,
        note="non-gated relu^2 experts (2 matmuls); the per-expert and shared-expert RMSNorms are not counted",
    ),
    Handler(
        ("nemotron_h",), num_experts=("n_routed_experts",), shared_expert_dim=("moe_shared_expert_intermediate_size",),
        gated=False, shared_gated=False, scoring="sigmoid", group_limited=True, sentinel_breaks=("eager",),
        note="non-gated relu^2 experts (2 matmuls); latent projections (moe_latent_size) are not counted",
    ),
    Handler(
        ("inkling_text",), num_experts=("n_routed_experts",), shared_expert_dim=(("n_shared_experts", "moe_intermediate_size"),),
        scoring="sigmoid", renormalize=True,
        note="router also scores the weighted shared experts (router width E+S)",
    ),
]
