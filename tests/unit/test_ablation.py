"""Expert ablation: removing expert e from one layer's routing equals a router that never scores e (its logit at
-inf), on Mixtral, whose router renormalises its top-k (so the kept weights agree exactly); recounted by hand."""
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler
from runner.profiler.ablation import expert_ablation


def nll(model, xs):
    with torch.no_grad():
        total = sum(float(-F.log_softmax(model(input_ids=x).logits.float()[:, :-1], -1)
                          .gather(-1, x[:, 1:].unsqueeze(-1)).sum()) for x in xs)
    return total / sum(x[:, 1:].numel() for x in xs)


def masked_router(router, expert):
    """The router's own forward with expert `expert` never chosen (its logit at -inf)."""
    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        logits = F.linear(hidden_states, self.weight)
        probs = torch.softmax(logits.float().masked_fill(torch.arange(logits.shape[-1]) == expert, float("-inf")), -1)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        return logits, top / top.sum(-1, keepdim=True), index
    return types.MethodType(forward, router)


def test_ablation_equals_a_router_without_the_expert():
    model = build_tiny_model("mixtral", num_hidden_layers=2)
    xs = [torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    own = nll(model, xs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False)
    try:
        table = expert_ablation(model, profiler, xs)
        routers = [layer.router for layer in profiler.layers]
    finally:
        profiler.detach()
    E = model.config.num_local_experts
    assert len(table) == 2 * E and (table["targets"] == 60).all()  # 2 batches x 2 x 15
    assert (table["kl"] >= 0).all() and table["kl"].gt(0).any()
    for position, expert in ((0, 0), (1, 3)):
        router = routers[position]
        router.forward = masked_router(router, expert)
        try:
            expected = nll(model, xs)
        finally:
            del router.forward  # back to the class's forward
        row = table[(table["layer"] == position) & (table["expert"] == expert)].iloc[0]
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
        assert row["delta_loss"] == pytest.approx(expected - own, abs=1e-5)
    assert nll(model, xs) == pytest.approx(own, rel=1e-6)  # the model is as it was
