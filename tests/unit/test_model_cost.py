"""Whole-model cost: the analytic FLOPs of the whole forward equal FlopCounterMode's count over the whole forward for
the tiny model of every supported architecture (eager and SDPA attention), or the architecture says why not; the
causal variant and the parameter conventions by hand."""
import warnings

import pytest
import torch

from handlers.forward import NOT_EXACT
from helpers.counting import count_forward
from helpers.tiny_configs import available_model_types, build_tiny_model, older_release
from runner import MOEProfiler
from runner.profiler.model_cost import causal_pairs

BATCH, SEQ = 2, 12


def whole_forward(model, attention: str):
    """(cost, analytic, measured) FLOPs per token of one forward under `attention`, or None where the model refuses it."""
    counted = count_forward(model, attention, BATCH, SEQ)
    return None if counted is None else (counted.cost, counted.analytic, counted.measured)


@pytest.mark.parametrize("model_type", available_model_types())
def test_whole_model_analytic_flops_equal_measured(model_type):
    if model_type in ("doge", "longcat_flash") and older_release(model_type):
        pytest.skip(older_release(model_type))
    model = build_tiny_model(model_type)
    ran = 0
    for attention in ("eager", "sdpa"):
        result = None if model_type == "doge" else whole_forward(model, attention)  # doge: no routed count
        if result is None:
            continue
        ran += 1
        cost, analytic, measured = result
        if cost.exact:
            assert analytic == measured, (attention, analytic, measured)
        else:
            assert cost.note and analytic != measured, (attention, cost.note)
    assert ran or model_type == "doge"
    if model_type == "doge":
        assert "doge" in NOT_EXACT


def test_causal_variant_by_hand():
    assert causal_pairs(4, 4) == 10  # 1 + 2 + 3 + 4
    assert causal_pairs(1, 9) == 9  # one decode query sees every cached key
    assert causal_pairs(2, 5) == 4 + 5


def test_parameter_conventions_on_a_tiny_olmoe():
    model = build_tiny_model("olmoe")
    profiler = MOEProfiler(model, verbose=False)
    counts = profiler.param_counts()
    embedding = model.get_input_embeddings().weight.numel()  # 128 x 64, untied from the LM head
    assert embedding == 128 * 64
    assert counts["params_active"] - counts["params_active_nonembedding"] == embedding
    cost = profiler.forward_cost()
    # OLMoE tiny: q, k, v, o are 64x64, 64x32, 64x32, 64x64 per layer (GQA 4/2 heads of 16), 4 layers; head 64x128
    assert cost.dense_per_token == 4 * 2 * (64 * 64 * 2 + 64 * 32 * 2)
    assert cost.head_per_position == 2 * 64 * 128
    assert cost.attention_flops(1, 3) == 4 * 2 * 4 * 9 * 32
    assert cost.attention_flops(1, 3, causal=True) == 4 * 2 * 4 * 6 * 32
    assert cost.kv_bytes_per_token(100, 4) == 4 * 2 * 32 * 4  # 4 layers x 2 kv heads x (16 + 16) x fp32


def test_device_peaks_from_the_table_or_the_config():
    from runner.profiler.hardware import peak_for

    assert peak_for("NVIDIA H100 80GB HBM3") == (989.5, 3350.0)  # torch's name of the SXM card
    assert peak_for("NVIDIA H100 PCIe") == (756.5, 2000.0)
    assert peak_for("NVIDIA H200") == (989.5, 4800.0)
    assert peak_for("NVIDIA H100 80GB HBM3", tflops=700.0) == (700.0, 3350.0)  # a given value wins
    assert peak_for("cpu (x86_64, 2 cores)", cuda=False) == (None, None)  # never guessed
    assert peak_for("Some Future GPU") == (None, None)
