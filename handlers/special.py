"""Architectures whose routing or experts break the common pattern; each says how in its note."""
from .base import Handler

ENTRIES = [
    Handler(
        ("llama4_text",), expert_dim=("intermediate_size",), shared_expert_dim=("intermediate_size",),
        router_output="logits", logits_index=1, experts_take_routing=False, scoring="sigmoid",
        exact=False, can_skip=False,
        note="experts run as a dense bmm over all E experts: executed FLOPs are E/k times the active FLOPs reported",
    ),
    Handler(
        ("jetmoe",), expert_dim=("intermediate_size",), experts_attr="input_linear", block_attrs=("mlp",),
        router_output="logits", logits_index=4, experts_take_routing=False, can_skip=False, exact=False,
        note="attention experts (MoA) are not counted; parallel experts take no (index, weight) pair",
    ),
    Handler(
        ("longcat_flash",), expert_dim=("expert_ffn_hidden_size",), scoring="softmax", can_skip=False,
        renormalize=False, zero_slots_run_since=(5, 25),
        note="zero-computation experts (index >= n_routed_experts): k counts real experts only; before transformers "
             "5.25 they cost nothing, from 5.25 on each runs on a real expert with weight 0 and costs like one",
    ),
    Handler(
        ("zaya",), exact=False, can_skip=False,
        note="router is an MLP (its FLOPs are not the 2*H*E counted) and the skip expert still runs as expert 0",
    ),
    Handler(
        ("doge",), expert_dim=("hidden_size",), router_attrs=("router_gate",), experts_attr="down_embed",
        router_output="none", top_k_attr="block.top_k", exact=False, can_skip=False,
        note="product-key retrieval over embedding experts: routing metrics and FLOPs are not modelled",
    ),
]
