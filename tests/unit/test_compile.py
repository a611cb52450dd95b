"""The profiler under torch.compile (CPU): compiled == eager, no extra graph breaks or recompiles, attach/detach
around compiled code, phases, and the GQA attention FLOP formulas the CUDA path needs.

Compiling is slow on CPU: the models are the tiny ones with 2 layers, most tests use the aot_eager backend (it runs
dynamo, functionalization and AOT autograd, so graph breaks, recompiles and in-place buffer updates show up there),
and one test uses inductor.
"""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from runner import MOEProfiler
from runner.profiler.cost_formulas import attention_backward_flops, attention_flops, count_flops
from helpers.tiny_configs import build_tiny_model
from helpers.profiling import quiet_profiler as profile

BACKEND = "aot_eager"
# architectures: plain (olmoe), GQA attention (qwen3_moe: 4 query heads, 2 K/V heads), shared expert (qwen2_moe)
MODEL_TYPES = ["olmoe", "qwen3_moe", "qwen2_moe"]
ROUTING_COLUMNS = ["tokens", "assignments", "k_hist", "flops", "flops_measured", "drop_rate_cf1_0", "drop_rate_cf1_25",
                   "drop_rate_cf1_5", "drop_rate_cf2_0"]
METRIC_COLUMNS = ["router_entropy", "top1_prob", "top1_margin", "selected_mass", "load_cv", "topk_boundary_margin"]


def inputs(seed=0, batch=2, seq=8):
    return torch.randint(2, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def tiny(model_type):
    return build_tiny_model(model_type, num_hidden_layers=2, experts_implementation="grouped_mm")


def graph_breaks(fn, *args, **kwargs) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args, **kwargs).graph_break_count


pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # tests/conftest.py


def assert_same_frames(eager, compiled):
    assert eager["phase"].tolist() == compiled["phase"].tolist()
    for column in ROUTING_COLUMNS:
        if column.startswith("drop_rate") and column not in eager and column not in compiled:
            continue  # capacity drops are opt-in: the analyses test below compiles them
        assert eager[column].tolist() == compiled[column].tolist(), column
    for column in METRIC_COLUMNS:
        np.testing.assert_allclose(compiled[column], eager[column], rtol=1e-6, atol=1e-9, err_msg=column)


def eager_frame(model, x, **kwargs):
    p = profile(model, **kwargs)
    with torch.no_grad(), p.measure_flops():
        model(input_ids=x)
    with torch.no_grad():
        model(input_ids=x)
    frame = p.layers_df()
    p.detach()
    return frame


# -- FLOPs: attention kernels with grouped K/V heads --------------------------------------------------------------

def test_gqa_attention_formulas_by_hand():
    # B=2, Hq=4 (K/V heads 2 broadcast to 4), Sq=5, Sk=7, D=8, Dv=6: QK^T 2*2*4*5*7*8, PV 2*2*4*5*7*6
    assert attention_flops(2, 4, 5, 7, 8, 6) == 2 * 2 * 4 * 5 * 7 * 8 + 2 * 2 * 4 * 5 * 7 * 6 == 7840
    # backward: scores again (D), dP (Dv), dV (Dv), dQ (D), dK (D)
    assert attention_backward_flops(2, 4, 5, 7, 8, 6) == 2 * 2 * 4 * 5 * 7 * (3 * 8 + 2 * 6)


def _fused_calls(q, k, v):
    t = lambda x: x.transpose(1, 2)  # noqa: E731  the *_attention_forward ops take [B, S, H, D]
    return {
        "_scaled_dot_product_flash_attention": lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v),
        "_scaled_dot_product_efficient_attention":
            lambda: torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False),
        "_scaled_dot_product_cudnn_attention":
            lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False),
        "_scaled_dot_product_flash_attention_for_cpu":
            lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v),
        "_flash_attention_forward": lambda: torch.ops.aten._flash_attention_forward(
            t(q), t(k), t(v), None, None, q.shape[2], k.shape[2], 0.0, False, False),
        "_efficient_attention_forward": lambda: torch.ops.aten._efficient_attention_forward(
            t(q), t(k), t(v), None, None, None, q.shape[2], k.shape[2], 0.0, 0),
    }


def test_fused_attention_kernels_with_gqa_count_under_the_counter():
    """The CUDA kernels run here on the meta device (shape-only), through FlopCounterMode and our mapping: with
    grouped K/V heads torch's own formulas assert (2.11) or read [B, S, H, D] as [B, H, S, D] (all releases)."""
    q = torch.empty(2, 4, 5, 8, device="meta")
    k = torch.empty(2, 2, 7, 8, device="meta")
    v = torch.empty(2, 2, 7, 6, device="meta")
    counted = {}
    for name, call in _fused_calls(q, k, v).items():
        if not hasattr(torch.ops.aten, name):
            continue
        with count_flops() as counter:
            call()
        counted[name] = sum(counter.flop_counts["Global"].values())
    assert counted and set(counted.values()) == {attention_flops(2, 4, 5, 7, 8, 6)}, counted


def test_sdpa_with_enable_gqa_counts_on_cpu():
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 6)
    with count_flops() as counter:
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert sum(counter.flop_counts["Global"].values()) == 7840


# -- compiled == eager ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_compiled_profile_equals_eager_without_extra_breaks_or_recompiles(model_type):
    model, x = tiny(model_type), inputs()
    eager = eager_frame(model, x)
    bare_breaks = graph_breaks(model, input_ids=x)
    p = profile(model)
    with torch.no_grad():
        assert graph_breaks(model, input_ids=x) == bare_breaks
        p.reset()
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=BACKEND, fullgraph=bare_breaks == 0)
        with p.measure_flops():  # the counter is a dispatch mode: dynamo runs these frames eagerly (exact count)
            compiled(input_ids=x)
        compiled(input_ids=x)  # compiled here
        with torch._dynamo.config.patch(error_on_recompile=True):
            p.reset()
            compiled(input_ids=x)
            with p.measure_flops():
                compiled(input_ids=x)
    assert_same_frames(eager, p.layers_df())
    df = p.layers_df()
    assert (df["tokens"] == 32).all() and (df["flops"] == 2 * df["flops_measured"]).all()  # one of two measured


def test_inductor_kneedle_equals_eager():
    model, x = tiny("olmoe"), inputs()
    params = dict(selector="kneedle", selector_params={"k_max": 4})
    eager = eager_frame(model, x, **params)
    with torch.no_grad():
        p = profile(model, **params)
        reference = model(input_ids=x).logits
        p.reset()
        compiled = torch.compile(model, fullgraph=True)  # inductor
        with p.measure_flops():
            compiled(input_ids=x)
        logits = compiled(input_ids=x).logits
    assert_same_frames(eager, p.layers_df())
    assert p.layers_df()["k_mean"].lt(4).any()  # the selector really dropped experts
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)


# parameters that make each selector drop experts on the tiny model's near-uniform routers
SELECTOR_PARAMS = {"topk": {"k": 2}, "kneedle": {}, "cumsum": {"threshold": 0.3}, "entropy": {},
                   "gap_ratio": {"ratio": 1.05}, "min_p": {"alpha": 0.9}, "random_k": {"keep": 0.4},
                   "layer_k": {"ks": [1, 3]}}


@pytest.mark.parametrize("name", sorted(SELECTOR_PARAMS))
def test_every_selector_traces_whole_and_equals_eager(name):
    """fullgraph=True: no graph break, no Python state changed per call, which is what CUDA-graph capture needs
    (checked on a GPU for routing and kneedle: BENCHMARKS.md); counts and the logits equal eager's."""
    from runner.profiler.selectors import SELECTORS

    assert set(SELECTOR_PARAMS) == set(SELECTORS)
    model, x = tiny("olmoe"), inputs()
    params = dict(selector=name, selector_params={"k_max": 4, **SELECTOR_PARAMS[name]})
    eager = eager_frame(model, x, **params)
    with torch.no_grad():
        p = profile(model, **params)
        reference = model(input_ids=x).logits
        p.reset()
        compiled = torch.compile(model, backend=BACKEND, fullgraph=True)
        with torch._dynamo.config.patch(error_on_recompile=True):
            with p.measure_flops():
                compiled(input_ids=x)
            logits = compiled(input_ids=x).logits
    assert_same_frames(eager, p.layers_df())
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [BACKEND, "inductor"])
def test_analyses_trace_whole_and_equal_eager(backend):
    """Co-activation, transitions, capacity drops (per call), the vocabulary table (the ids captured by the top model's
    pre-hook), the layer-ahead prediction (the next router called in the hook) and the routing trace under fullgraph
    compile equal eager, with a selector dropping slots; a second
    shape (decode-like calls) re-traces once and still counts per call. The kept selection was sized by the eager
    calls (a compiled call cannot grow it)."""
    model = tiny("olmoe")
    params = dict(selector="kneedle", selector_params={"k_max": 4},
                  analyses=("capacity", "coactivation", "transitions", "vocab", "lookahead"))
    calls = [inputs(), inputs(seed=1, batch=3, seq=1), inputs(seed=2, batch=3, seq=1)]

    def run(fn, p):
        traced = []
        with torch.no_grad():
            for x in calls:
                fn(input_ids=x)
                traced.append(p.drain_trace())
        return p.layers_df(), p.coactivation_df(), p.transitions_df(), p.recorder.snapshot()["vocab"], traced

    p = profile(model, **params)
    p.start_trace(capacity=16, probs=True)
    eager, *eager_pairs, eager_vocab, eager_trace = run(model, p)
    p.reset()
    compiled, *compiled_pairs, compiled_vocab, compiled_trace = run(torch.compile(model, backend=backend,
                                                                                  fullgraph=True), p)
    assert_same_frames(eager, compiled)
    for before, after in zip(eager_trace, compiled_trace):  # per call and layer: experts, weights, phase, probs
        for layer_before, layer_after in zip(before, after):
            assert layer_before["overflow"] == layer_after["overflow"] == 0
            for name in ("experts", "weights", "phase", "probs"):
                np.testing.assert_array_equal(layer_before[name], layer_after[name], err_msg=name)
    assert (eager_trace[0][0]["experts"] == -1).any()  # the selector dropped slots, written as -1
    for column in ("jaccard_next", "distinct_experts_per_call", "distinct_experts_uniform", "lookahead_recall"):
        np.testing.assert_allclose(compiled[column], eager[column], rtol=1e-9, err_msg=column)
    assert 0 < eager["lookahead_recall"].iloc[0] <= 1
    for before, after in zip(eager_pairs, compiled_pairs):
        pd.testing.assert_frame_equal(before, after)
        assert len(before)
    assert eager["drop_rate_cf1_0"].gt(0).any() and eager["jaccard_next"].iloc[0] > 0
    np.testing.assert_array_equal(compiled_vocab, eager_vocab)  # every token paired with its id, exactly
    assert (eager["vocab_tokens"] == eager["tokens"]).all() and (compiled["vocab_tokens"] == eager["tokens"]).all()


# -- attach / detach around compiled code ------------------------------------------------------------------------

@pytest.mark.parametrize("hook_guards", [False, True], ids=["fresh-process", "hook-guards-on"])
def test_attach_after_compile_counts_exactly_and_detach_stops_recording(hook_guards):
    """fresh-process: code compiled before any profiler ignores hooks: attaching resets dynamo (warning).
    hook-guards-on: code compiled once a profiler turned hook guards on re-traces by itself (no reset)."""
    model, x = tiny("olmoe"), inputs()
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=not hook_guards), torch.no_grad():
        compiled = torch.compile(model, backend=BACKEND)
        bare = compiled(input_ids=x).logits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = MOEProfiler(model, verbose=False)
        reset = [w for w in caught if "already has torch.compile'd code" in str(w.message)]
        assert len(reset) == (0 if hook_guards else 1)
        compiled(input_ids=x)
        assert p.layers_df()["tokens"].tolist() == [16, 16]  # not zero: re-traced with the hooks
        p.set_selector("kneedle", k_max=4)
        compiled(input_ids=x)
        k_mean = p.layers_df()["k_mean"]
        assert p.layers_df()["tokens"].tolist() == [32, 32] and (k_mean < 3).all()  # k=2 then kneedle's k
        p.detach()
        after = compiled(input_ids=x).logits
    assert p.layers_df()["tokens"].tolist() == [32, 32]  # the detached hooks do not run in the compiled graph
    torch.testing.assert_close(after, bare, rtol=0, atol=0)  # nor does the selector


def test_a_profiled_twin_does_not_reuse_a_bare_twins_compiled_code():
    """Two instances of one class share compiled code unless hooks are guarded: the profiled one must re-trace."""
    bare_model, profiled_model, x = tiny("olmoe"), tiny("olmoe"), inputs()
    p = profile(profiled_model)  # before anything is compiled
    with torch.no_grad():
        torch.compile(bare_model, backend=BACKEND)(input_ids=x)
        torch.compile(profiled_model, backend=BACKEND)(input_ids=x)
    assert p.layers_df()["tokens"].tolist() == [16, 16]


def test_compiled_wrapper_can_be_profiled():
    model, x = tiny("olmoe"), inputs()
    compiled = torch.compile(model, backend=BACKEND)
    p = profile(compiled)  # the OptimizedModule: hooks go on the module it wraps
    assert p.model is model
    with torch.no_grad():
        compiled(input_ids=x)
    assert p.layers_df()["tokens"].tolist() == [16, 16]


def test_paused_and_default_routing_under_compile():
    model, x = tiny("olmoe"), inputs()
    p = profile(model, selector="kneedle", selector_params={"k_max": 4})
    compiled = torch.compile(model, backend=BACKEND)
    with torch.no_grad():
        compiled(input_ids=x)
        with p.paused():
            compiled(input_ids=x)
        with p.default_routing():
            reference = compiled(input_ids=x).logits
        compiled(input_ids=x)
    df = p.layers_df()
    assert df["tokens"].tolist() == [32, 32]  # the paused and reference passes were not recorded
    p.detach()
    with torch.no_grad():
        native = model(input_ids=x).logits
    torch.testing.assert_close(reference, native, rtol=1e-5, atol=1e-6)


# -- phases ---------------------------------------------------------------------------------------------------------

def test_phases_give_separate_rows_eager_and_compiled():
    model = tiny("olmoe")
    p = profile(model)
    with torch.no_grad():
        model(input_ids=inputs())
    single = p.layers_df()
    assert single["phase"].tolist() == ["prefill", "prefill"] and single["tokens"].tolist() == [16, 16]
    compiled = torch.compile(model, backend=BACKEND)
    with torch.no_grad():
        compiled(input_ids=inputs(seq=4))
        with p.phase("decode"):
            for _ in range(3):
                compiled(input_ids=inputs(batch=2, seq=1))
        with torch._dynamo.config.patch(error_on_recompile=True):  # a known phase is a device-side switch
            with p.phase("decode"):
                compiled(input_ids=inputs(batch=2, seq=1))
            compiled(input_ids=inputs(seq=4))
        with p.phase("score"):  # a new phase: accumulators grow, what was recorded stays
            model(input_ids=inputs(batch=1, seq=5))
    df = p.layers_df()
    assert list(zip(df["phase"], df["layer"], df["tokens"])) == [
        ("prefill", 0, 32), ("prefill", 1, 32), ("decode", 0, 8), ("decode", 1, 8), ("score", 0, 5), ("score", 1, 5)]
    assert (df["k_mean"] == 2).all() and math.isclose(df["flops"].iloc[2] / 8, df["flops_per_token"].iloc[0])
