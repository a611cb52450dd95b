"""MOEProfiler on tiny real transformers models: detection, provenance, FLOPs, top-k, metrics, detach."""
import math
from types import SimpleNamespace
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, OlmoeConfig, Qwen2MoeConfig

from runner import MOEProfiler, ProfilerError
from runner.profiler.metrics import load_balance
from runner.profiler.accumulators import RoutingRecorder
from runner.profiler.scan import NoMoEError

H, E, K, I = 64, 8, 2, 96


def olmoe(layers=2, **kw):
    cfg = OlmoeConfig(hidden_size=H, intermediate_size=I, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, num_experts=E, num_experts_per_tok=K, vocab_size=128,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def tokens(batch=2, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 128, (batch, seq), generator=g)


def run(model, profiler, x, measure=True):
    with torch.no_grad():
        if measure:
            with profiler.measure_flops():
                model(input_ids=x)
        else:
            model(input_ids=x)


def test_olmoe_layers_flops_and_provenance():
    model = olmoe()
    p = MOEProfiler(model, verbose=False)
    x = tokens()
    run(model, p, x)
    df = p.layers_df()
    assert list(df["layer"]) == [0, 1]
    assert (df["tokens"] == 32).all() and (df["assignments"] == 64).all() and (df["k_mean"] == 2.0).all()
    per_token = 2 * H * E + K * 6 * H * I  # router + k gated experts (3 matmuls)
    assert (df["flops_per_token"] == per_token).all()
    assert (df["flops"] == df["flops_measured"]).all()
    assert df.loc[0, "expert_dim"] == I and df.loc[0, "expert_dim_source"] == "config"
    assert df.loc[0, "expert_dim_detail"] == "model.config.intermediate_size"
    assert df.loc[0, "shared_expert_dim"] == 0
    experts = p.experts_df()
    assert len(experts) == 2 * E and experts.groupby("layer")["tokens"].sum().tolist() == [64, 64]
    np.testing.assert_allclose(experts.groupby("layer")["load_fraction"].sum(), 1.0)


def test_scan_report_groups_identical_layers_and_names_sources():
    model = olmoe(layers=3)
    p = MOEProfiler(model, verbose=False)
    report = p.scan_report()
    assert "Layers 0-2 (3 x OlmoeSparseMoeBlock @ model.layers.{i}.mlp)" in report
    assert "Expert dim: 96 (model.config.intermediate_size)" in report
    assert report.count("Expert dim") == 1


def test_priority_chain_override_fallback_and_mismatch_warning():
    model = olmoe()
    p = MOEProfiler(model, overrides={"expert_dim": 50}, fallbacks={"expert_dim": 7, "num_experts": 3}, verbose=False)
    dims = p.layers[0].dims
    assert (dims["expert_dim"].value, dims["expert_dim"].source) == (50, "override")
    assert (dims["num_experts"].value, dims["num_experts"].source) == (E, "config")  # fallback sits below config
    # a config that contradicts the weights is reported with both values
    model.config.intermediate_size = 128
    with pytest.warns(UserWarning, match=r"expert_dim: model.config.intermediate_size = 128 but the module says 96"):
        MOEProfiler(model, verbose=False)


def test_module_introspection_when_config_is_silent():
    model = olmoe()
    # a config that does not name the expert width (e.g. a hand-written one)
    model.config = SimpleNamespace(model_type="olmoe", hidden_size=H, num_experts=E, num_experts_per_tok=K)
    p = MOEProfiler(model, verbose=False)
    dim = p.layers[0].dims["expert_dim"]
    assert dim.value == I and dim.source == "module"


def test_set_top_k_changes_real_compute_and_detach_restores():
    model = olmoe()
    x = tokens()
    measured = {}
    for k in (1, 2, 4, 8):
        p = MOEProfiler(model, verbose=False)
        p.set_top_k(k)
        run(model, p, x)
        df = p.layers_df()
        assert (df["k_mean"] == k).all()
        assert (df["flops_measured"] == df["flops"]).all()
        measured[k] = int(df["flops_measured"].sum())
        p.detach()
        assert model.model.layers[0].mlp.gate.top_k == K
    per_expert = 2 * 32 * 6 * H * I  # layers * tokens * 6HI
    assert measured[4] - measured[2] == 2 * per_expert
    assert measured[8] - measured[1] == 7 * per_expert


@pytest.mark.parametrize("bad", [0, -1, 9, 2.5, "4", True])
def test_set_top_k_rejects_bad_values(bad):
    p = MOEProfiler(olmoe(), verbose=False)
    with pytest.raises(ProfilerError, match="top-k"):
        p.set_top_k(bad)


def test_detach_leaves_model_bit_identical():
    model = olmoe()
    x = tokens()
    with torch.no_grad():
        before = model(input_ids=x).logits
    with MOEProfiler(model, selector="kneedle", selector_params={"k_max": 4}, verbose=False):
        with torch.no_grad():
            model(input_ids=x)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert getattr(model.model.layers[0].mlp.experts, "_is_expert_parallel", False) is False
    with torch.no_grad():
        after = model(input_ids=x).logits
    assert torch.equal(before, after)


def test_dense_layers_are_not_moe_and_layer_ids_are_the_models():
    cfg = Qwen2MoeConfig(hidden_size=H, intermediate_size=I, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, num_experts=E,
                         num_experts_per_tok=K, vocab_size=128, mlp_only_layers=[0, 2], pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    p = MOEProfiler(model, verbose=False)
    assert [l.layer_id for l in p.layers] == [1, 3]
    run(model, p, tokens())
    df = p.layers_df()
    # shared expert (gated, 48 wide) plus its sigmoid gate Linear(H, 1)
    assert (df["flops_per_token"] == 2 * H * E + K * 6 * H * 32 + 6 * H * 48 + 2 * H).all()
    assert (df["flops"] == df["flops_measured"]).all()
    assert df.loc[0, "shared_expert_dim_detail"] == "model.config.shared_expert_intermediate_size"


def test_model_without_moe_fails_clearly():
    cfg = LlamaConfig(hidden_size=H, intermediate_size=I, num_hidden_layers=1, num_attention_heads=4, vocab_size=128)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(NoMoEError, match=r"no MoE block found in LlamaForCausalLM \(model_type='llama'.*scanned \d+ modules"):
        MOEProfiler(model, verbose=False)


class ToyRouter(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 16) * 0.1)
        self.top_k = 2

    def forward(self, x):
        logits = x.reshape(-1, 16) @ self.weight.t()
        w, idx = torch.softmax(logits, -1).topk(self.top_k, -1)
        return logits, w, idx


class ToyExperts(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(4, 2 * 24, 16) * 0.1)
        self.down_proj = nn.Parameter(torch.randn(4, 16, 24) * 0.1)

    def forward(self, x, idx, w):
        out = torch.zeros_like(x)
        for slot in range(idx.shape[1]):
            for e in range(4):
                rows = idx[:, slot] == e
                if rows.any():
                    g, u = (x[rows] @ self.gate_up_proj[e].t()).chunk(2, -1)
                    out[rows] += w[rows, slot, None] * ((torch.nn.functional.silu(g) * u) @ self.down_proj[e].t())
        return out


class ToyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate, self.experts = ToyRouter(), ToyExperts()

    def forward(self, x):
        _, w, idx = self.gate(x)
        return self.experts(x.reshape(-1, 16), idx, w)


def test_custom_model_without_handler_uses_introspection_and_defaults():
    model = nn.Sequential()
    model.layers = nn.ModuleList([ToyBlock(), ToyBlock()])
    p = MOEProfiler(model, verbose=False)
    dims = p.layers[0].dims
    assert (dims["num_experts"].value, dims["num_experts"].source) == (4, "module")
    assert (dims["hidden_dim"].value, dims["expert_dim"].value, dims["top_k"].value) == (16, 24, 2)
    assert (dims["shared_expert_dim"].value, dims["shared_expert_dim"].detail) == (0, "no shared expert module")
    assert "generic" in p.scan_report()
    x = torch.randn(10, 16)
    with p.measure_flops():
        for block in model.layers:
            block(x)
    df = p.layers_df()
    assert (df["flops"] == df["flops_measured"]).all()
    assert (df["flops_per_token"] == 2 * 16 * 4 + 2 * 6 * 16 * 24).all()


def test_fallback_sits_below_module_and_above_default():
    model = nn.Sequential()
    model.layers = nn.ModuleList([ToyBlock()])
    model.layers[0].gate.k = model.layers[0].gate.__dict__.pop("top_k")  # top-k no longer discoverable
    assert MOEProfiler(model, verbose=False).layers[0].dims["top_k"].source == "default"
    dims = MOEProfiler(model, fallbacks={"top_k": 3, "num_experts": 99}, verbose=False).layers[0].dims
    assert (dims["top_k"].value, dims["top_k"].source) == (3, "fallback")
    assert (dims["num_experts"].value, dims["num_experts"].source) == (4, "module")
    with pytest.raises(ValueError, match="unknown dimension"):
        MOEProfiler(model, overrides={"experts": 3}, verbose=False)


def test_meta_device_analytic_flops_and_params():
    cfg = OlmoeConfig(hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
                      num_experts=64, num_experts_per_tok=8, vocab_size=50304)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    p = MOEProfiler(model, verbose=False)
    per_layer = p.flops_per_token()
    assert (per_layer["flops"] == 100_925_440).all() and len(per_layer) == 16
    assert p.flops_per_token(k=4)["flops"].iloc[0] == 262_144 + 4 * 12_582_912
    params = p.param_counts()
    assert round(params["params_total"] / 1e9, 2) == 6.92


def test_metric_definitions_on_hand_made_routing():
    rec = RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", capacity=8)
    logits = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    index = torch.tensor([[0, 1], [2, 4]])  # second token: one slot dropped with the sentinel (4)
    weight = torch.tensor([[0.7, 0.1], [0.25, 0.0]])
    rec.record(0, logits, index, weight)
    snap = rec.snapshot()
    assert snap["counts"][0].tolist() == [1, 1, 1, 0]
    assert snap["k_hist"][0].tolist() == [0, 1, 1, 0, 0]
    h1 = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    entropy, top1, margin, mass = snap["sums"][0][:4]
    assert entropy == pytest.approx(h1 + math.log(4), rel=1e-6)
    assert top1 == pytest.approx(0.95, rel=1e-6) and margin == pytest.approx(0.6, rel=1e-6)
    assert mass == pytest.approx(0.8 + 0.25, rel=1e-6)
    np.testing.assert_allclose(snap["gate_mass"][0], [0.7, 0.1, 0.25, 0.0], rtol=1e-6)
    balance = load_balance(np.array([3, 1, 0, 0]), 4)
    assert balance["dead_experts"] == 2 and balance["load_max_mean"] == 3.0
    assert balance["load_cv"] == pytest.approx(np.std([3, 1, 0, 0]) / 1.0)
    assert balance["load_gini"] == pytest.approx(2 * (3 * 1 + 4 * 3) / (4 * 4) - 5 / 4)


def test_profiler_memory_does_not_grow_with_tokens():
    model = olmoe()
    p = MOEProfiler(model, buffer_tokens=64, verbose=False)
    held = []
    with torch.no_grad():
        for seed in range(40):
            model(input_ids=tokens(4, 32, seed))
            held.append(p.recorder.buffer_bytes)
    assert held[0] == held[9] == held[39]  # 128 tokens seen vs 5k: the same bytes
    accumulators = sum(t.numel() * t.element_size() for g in p.recorder.groups for t in g.buffers())
    # staging: 64 tokens x 2 layers of fp32 logits [8], int64 indices [2], fp32 weights [2]
    assert held[0] - accumulators == 2 * 64 * (8 * 4 + 2 * 8 + 2 * 4)
    p.recorder.flush()
    assert p.recorder.buffer_bytes == held[0]
    assert p.layers_df()["tokens"].iloc[0] == 40 * 128


def test_recorder_flushes_match_single_pass():
    model = olmoe()
    x = tokens(4, 32)
    small = MOEProfiler(model, buffer_tokens=40, verbose=False)  # forces many flushes and a direct reduction
    with torch.no_grad():
        model(input_ids=x[:1, :16])
        model(input_ids=x)
    a = small.layers_df()
    small.detach()
    big = MOEProfiler(model, buffer_tokens=4096, verbose=False)
    with torch.no_grad():
        model(input_ids=x[:1, :16])
        model(input_ids=x)
    b = big.layers_df()
    for col in ("tokens", "assignments", "flops"):
        assert a[col].tolist() == b[col].tolist()
    for col in ("router_entropy", "top1_prob", "selected_mass", "load_cv"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-9)


def test_latency_is_recorded_per_layer_after_warmup():
    model = olmoe()
    p = MOEProfiler(model, latency=True, warmup=1, verbose=False)
    with torch.no_grad():
        for _ in range(3):
            model(input_ids=tokens())
    df = p.layers_df()
    assert (df["latency_calls"] == 2).all() and (df["latency_ms_p50"] > 0).all()


def test_latency_is_kept_per_phase_not_pooled():
    """A 2 x 64-token prefill call and a one-token decode call are timed apart: each phase has its own calls (after
    its own warm-up call) and its own mean, so the decode rows are not the prefill rows repeated."""
    model = olmoe()
    p = MOEProfiler(model, latency=True, warmup=1, phases=("prefill", "decode"), verbose=False)
    with torch.no_grad():
        for _ in range(4):
            model(input_ids=tokens(batch=2, seq=64))
        with p.phase("decode"):
            for _ in range(3):
                model(input_ids=tokens(batch=1, seq=1))
    df = p.layers_df().set_index(["phase", "layer"])
    assert (df.loc["prefill", "latency_calls"] == 3).all()
    assert (df.loc["decode", "latency_calls"] == 2).all()
    assert (df.loc["prefill", "latency_ms_mean"].to_numpy() != df.loc["decode", "latency_ms_mean"].to_numpy()).all()


def test_frames_after_inference_mode_forwards():
    model = olmoe()
    p = MOEProfiler(model, buffer_tokens=16, verbose=False)
    with torch.inference_mode():
        for seed in range(3):
            model(input_ids=tokens(seed=seed))
    assert p.layers_df()["tokens"].iloc[0] == 96  # read outside inference mode
    with torch.inference_mode():
        model(input_ids=tokens())
    assert p.layers_df()["tokens"].iloc[0] == 128


def test_top1_and_margin_equal_topk_including_ties():
    from runner.profiler.metrics import top1_and_margin

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 64), (3, 7, 8), (4, 2)]:
        probs = torch.softmax(torch.randn(shape, generator=g), -1)
        top2 = probs.topk(2, -1).values
        top1, margin = top1_and_margin(probs)
        assert torch.equal(top1, top2[..., 0]) and torch.equal(margin, top2[..., 0] - top2[..., 1])
    top1, margin = top1_and_margin(torch.tensor([[0.4, 0.4, 0.2], [0.7, 0.2, 0.1]]))
    assert top1.tolist() == pytest.approx([0.4, 0.7]) and margin.tolist() == pytest.approx([0.0, 0.5])  # a tie: 0
    top1, margin = top1_and_margin(torch.ones(3, 1))  # one expert: no runner-up
    assert top1.tolist() == [1, 1, 1] and margin.tolist() == [0, 0, 0]
