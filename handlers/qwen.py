"""Qwen-MoE family and other archs with an explicit `shared_expert_intermediate_size`."""
from .base import Handler

_SHARED = ("shared_expert_intermediate_size",)

ENTRIES = [
    Handler(("qwen2_moe",), shared_expert_dim=_SHARED),
    Handler(("qwen3_moe",)),
    Handler(("qwen3_next",), shared_expert_dim=_SHARED),
    Handler(("qwen3_5_moe_text",), shared_expert_dim=_SHARED, renormalize=True),
    Handler(("qwen4_exp_text",), shared_expert_dim=_SHARED),
    Handler(("flint",), shared_expert_dim=_SHARED, scoring="sigmoid", renormalize=True),
    Handler(("lara_mini",), shared_expert_dim=_SHARED),
    Handler(("kolibri1", "kolibri1_1"), shared_expert_dim=_SHARED, scoring="sigmoid", renormalize=True),
    Handler(("laguna",), shared_expert_dim=_SHARED, scoring="sigmoid", renormalize=True),
    Handler(("mellum",)),
    Handler(("lfm2_moe",), scoring="sigmoid", renormalize=True),
    Handler(("beam",), scoring="sigmoid"),
    Handler(("inkling2_text", "inkling2_loop_text"), num_experts=("n_routed_experts",), scoring="sigmoid", renormalize=True),
    Handler(
        ("gemma4_text",), top_k=("top_k_experts",), top_k_attr="config.top_k_experts", scoring="probs",
        renormalize=True, measured_parts=("router", "experts"),
        note="router and experts sit in the decoder layer, beside a dense MLP that is not counted",
    ),
]
