"""IBM Granite MoE: `block_sparse_moe`, top-k over logits, and a shared MLP in the decoder layer."""
from .base import Handler

_GRANITE = Handler(("<granite>",), expert_dim=("intermediate_size",), renormalize=True)
_LAYER_SHARED = dict(layer_shared_attrs=("shared_mlp",), shared_expert_dim=("shared_intermediate_size",))

ENTRIES = [
    _GRANITE.with_(model_types=("granitemoe",)),
    _GRANITE.with_(model_types=("granitemoeshared",), **_LAYER_SHARED),
    _GRANITE.with_(model_types=("granitemoe_swa",), **_LAYER_SHARED),
    _GRANITE.with_(model_types=("granitemoehybrid",), **_LAYER_SHARED),
]
