"""Softmax -> top-k routers whose expert width is `intermediate_size` (Mixtral, OLMoE and kin)."""
from .base import Handler

_DENSE_WIDTH = ("intermediate_size",)

ENTRIES = [
    Handler(("olmoe",), expert_dim=_DENSE_WIDTH),
    Handler(("flex_olmo",), expert_dim=_DENSE_WIDTH),
    Handler(("mixtral",), expert_dim=_DENSE_WIDTH, renormalize=True),
    Handler(("minimax",), expert_dim=_DENSE_WIDTH, renormalize=True),
    Handler(("minimax_m2",), expert_dim=_DENSE_WIDTH, scoring="sigmoid", renormalize=True),
    Handler(
        ("minimax_m3_vl_text",), expert_dim=_DENSE_WIDTH, scoring="sigmoid", renormalize=True,
        shared_expert_dim=("shared_intermediate_size",),
    ),
    Handler(("jamba",), expert_dim=_DENSE_WIDTH, renormalize=False),
    Handler(
        ("hunyuan_v1_moe",), expert_dim=_DENSE_WIDTH, top_k=("moe_topk", "num_experts_per_tok"),
        renormalize=True, shared_attrs=("shared_mlp",), shared_expert_dim=("intermediate_size",),
    ),
    Handler(
        ("gpt_oss",), expert_dim=_DENSE_WIDTH, renormalize=True, sentinel_breaks=("eager",),
        note="top-k over raw logits (router has a bias), softmax over the k kept; expert biases are not counted",
    ),
    Handler(
        ("phimoe",), expert_dim=_DENSE_WIDTH, top_k_settable=False, renormalize=True,
        note="sparsemixer routing is hard-wired top-2: router.top_k is ignored",
    ),
    Handler(
        ("aria_text",), num_experts=("moe_num_experts",), top_k=("moe_topk",), expert_dim=_DENSE_WIDTH,
        shared_expert_dim=(("intermediate_size", "moe_num_shared_experts"),), renormalize=True,
    ),
    Handler(
        ("cohere2_moe",), expert_dim=_DENSE_WIDTH, shared_expert_dim=(("intermediate_size", "num_shared_experts"),),
    ),
    Handler(
        ("dbrx",), num_experts=("ffn_config.moe_num_experts",), top_k=("ffn_config.moe_top_k",),
        hidden_dim=("d_model", "hidden_size"), expert_dim=("ffn_config.ffn_hidden_size",),
        top_k_attr="block.top_k", router_output="logits", logits_index=None, renormalize=True, can_skip=False,
        note="experts are 2-D concatenated w1/v1/w2 and reject the sentinel index: per-token k cannot skip compute",
    ),
]
