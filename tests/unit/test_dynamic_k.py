"""Dynamic-k selectors really skip compute: measured FLOPs == analytic FLOPs from the real per-token k."""

import pytest
import torch

from handlers import REGISTRY
from runner import MOEProfiler, ProfilerError
from runner.profiler.selectors import SELECTORS, SelectorError
from helpers.tiny_configs import EAGER_ONLY_EXPERTS, available_model_types, build_tiny_model, older_release
from helpers.profiling import quiet_profiler as profile

SKIPPABLE = [mt for mt in available_model_types() if REGISTRY.get(mt).can_skip and REGISTRY.get(mt).top_k_settable]

NOT_SKIPPABLE = [mt for mt in available_model_types() if not REGISTRY.get(mt).can_skip]


def inputs(seed=0):
    return torch.randint(2, 128, (2, 12), generator=torch.Generator().manual_seed(seed))


def measured_run(model, profiler, x):
    with torch.no_grad(), profiler.measure_flops():
        logits = model(input_ids=x).logits
    return logits, profiler.layers_df()


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
@pytest.mark.parametrize("model_type", SKIPPABLE)
def test_dropped_experts_are_not_computed(model_type, implementation):
    if implementation != "eager" and model_type in EAGER_ONLY_EXPERTS:  # none of SKIPPABLE today
        pytest.skip(f"{model_type} has only its native eager experts: {EAGER_ONLY_EXPERTS[model_type]}")
    model = build_tiny_model(model_type, experts_implementation=implementation)
    if model_type == "aria_text" and older_release(model_type):  # refused with one clear error: checked instead
        with pytest.raises(ProfilerError, match="experts reject the sentinel index; use experts_implementation="):
            profile(model, selector="cumsum", selector_params={"k_max": 4, "threshold": 0.3})
        return
    if implementation in REGISTRY.get(model_type).sentinel_breaks:
        with pytest.warns(UserWarning, match="reject the sentinel index: dropped slots run through"):
            MOEProfiler(model, selector="cumsum", selector_params={"k_max": 4, "threshold": 0.3}, verbose=False).detach()
    x = inputs()
    full = profile(model)
    full.set_top_k(4)
    _, dense = measured_run(model, full, x)
    full.detach()
    dynamic = profile(model, selector="cumsum", selector_params={"k_max": 4, "threshold": 0.3})
    logits, df = measured_run(model, dynamic, x)
    assert torch.isfinite(logits).all()
    assert (df["flops"] == df["flops_measured"]).all(), df[["layer", "k_mean", "flops", "flops_measured"]]
    assert (df["k_mean"] >= 1).all() and (df["k_mean"] <= 4).all()
    saved = dense["flops_measured"].sum() - df["flops_measured"].sum()
    per_expert = dynamic.layers[0].cost.per_expert
    assert saved == (dense["assignments"].sum() - df["assignments"].sum()) * per_expert
    if (df["k_mean"] < 4).any():
        assert saved > 0


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_profiles_exactly(name):
    model = build_tiny_model("olmoe")
    profiler = profile(model, selector=name, selector_params={"k_max": 6})
    _, df = measured_run(model, profiler, inputs())
    assert (df["flops"] == df["flops_measured"]).all()
    assert (df["top_k"] == 6).all()
    hist = df["k_hist"].iloc[0]
    assert sum(hist) == df["tokens"].iloc[0] and len(hist) <= 7
    assert df["k_mean"].iloc[0] == pytest.approx(sum(i * c for i, c in enumerate(hist)) / sum(hist))
    assert 0 <= df["k_at_1"].iloc[0] <= 1 and 0 <= df["k_at_max"].iloc[0] <= 1


@pytest.mark.parametrize("model_type", ["olmoe", "mixtral", "qwen3_moe"])
def test_topk_selector_below_k_max_reproduces_native_routing(model_type):
    """Keeping the first 2 of 4 candidates (renormalised per the arch's convention) equals native top-2."""
    model = build_tiny_model(model_type)
    x = inputs()
    with torch.no_grad():
        native = model(input_ids=x).logits
    profiler = profile(model, selector="topk", selector_params={"k_max": 4, "k": 2})
    with torch.no_grad():
        selected = model(input_ids=x).logits
    torch.testing.assert_close(selected, native, rtol=1e-5, atol=1e-5)
    assert (profiler.layers_df()["k_mean"] == 2).all()


def test_renormalize_option_changes_weights():
    model = build_tiny_model("mixtral")  # renormalises its top-k
    x = inputs()
    with torch.no_grad():
        native = model(input_ids=x).logits
    p = profile(model, selector="topk", selector_params={"k_max": 4, "k": 2}, renormalize=False)
    with torch.no_grad():
        raw = model(input_ids=x).logits
    assert not torch.allclose(raw, native, atol=1e-4)


@pytest.mark.parametrize("model_type", NOT_SKIPPABLE)
def test_architectures_that_cannot_skip_say_so(model_type):
    model = build_tiny_model(model_type)
    with pytest.raises(ProfilerError, match="cannot skip experts per token"):
        profile(model, selector="kneedle", selector_params={"k_max": 2})


def test_bad_selector_input_is_rejected():
    model = build_tiny_model("olmoe")
    with pytest.raises(SelectorError):
        profile(model, selector="kneedle", selector_params={"k_max": 99})
    with pytest.raises(SelectorError):
        profile(model, selector="nope")
    with pytest.raises(SelectorError):
        profile(model, selector="cumsum", selector_params={"threshold": 2.0})


def test_user_selector_function():
    def keep_one(probs, k_max, k_min=1):
        mask = torch.zeros(probs.shape[0], k_max, dtype=torch.bool, device=probs.device)
        mask[:, 0] = True
        return mask

    model = build_tiny_model("olmoe")
    profiler = profile(model, selector=keep_one, selector_params={"k_max": 4})
    _, df = measured_run(model, profiler, inputs())
    assert (df["k_mean"] == 1).all() and (df["flops"] == df["flops_measured"]).all()
    assert profiler.selector_name == "keep_one"


def test_default_routing_context_is_the_reference():
    model = build_tiny_model("olmoe")
    x = inputs()
    with torch.no_grad():
        native = model(input_ids=x).logits
    profiler = profile(model, selector="kneedle", selector_params={"k_max": 8})
    with torch.no_grad():
        with profiler.default_routing():
            reference = model(input_ids=x).logits
        model(input_ids=x)
    torch.testing.assert_close(reference, native)
    assert profiler.layers_df()["tokens"].iloc[0] == 24  # the reference pass was not recorded


@pytest.mark.parametrize("model_type", ["olmoe", "gpt_oss", "qwen2_moe", "nemotron_h"])
def test_fast_skip_experts_equal_transformers_expert_parallel_path(model_type):
    """runner.profiler.experts' one-mask forward computes exactly what transformers' grouped_mm does with sentinels."""
    model = build_tiny_model(model_type, experts_implementation="grouped_mm")
    x = inputs()
    outputs = {}
    for fast in (False, True):
        p = profile(model)
        p.set_selector("cumsum", k_max=4, threshold=0.4, fast_skip=fast)
        implementation = model.config.get_text_config()._experts_implementation
        assert implementation == ("moe_profiler_grouped_mm" if fast else "grouped_mm")
        with torch.no_grad(), p.measure_flops():
            outputs[fast] = model(input_ids=x).logits
        df = p.layers_df()
        assert (df["flops"] == df["flops_measured"]).all() and (df["k_mean"] < 4).any()
        p.detach()
        assert model.config.get_text_config()._experts_implementation == "grouped_mm"
    torch.testing.assert_close(outputs[True], outputs[False], rtol=0, atol=0)
