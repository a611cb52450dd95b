"""Every MoE architecture in the installed transformers: detection, exact FLOPs (eager and grouped_mm), top-k."""
import warnings

import pytest
import torch

from handlers import REGISTRY
from runner import MOEProfiler, ProfilerError
from helpers.tiny_configs import available_model_types, build_tiny_model, supports_experts_implementation

MODEL_TYPES = available_model_types()
IMPLEMENTATIONS = ["eager", "grouped_mm"]


def forward(model, profiler, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 128, (2, 12), generator=g)
    with torch.no_grad(), profiler.measure_flops():
        model(input_ids=x)


def test_every_model_type_has_a_handler():
    assert not [mt for mt in MODEL_TYPES if mt not in REGISTRY]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_analytic_flops_equal_measured(model_type, implementation):
    if implementation != "eager" and not supports_experts_implementation(model_type):
        pytest.skip(f"{model_type} has only its native eager experts")
    model = build_tiny_model(model_type, experts_implementation=implementation)
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(2, 128, (1, 4)))
    except Exception as error:  # the tiny config is written for the newest transformers
        pytest.skip(f"the tiny {model_type} does not run on this transformers release: {error}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False)
    try:
        forward(model, profiler)
    except ProfilerError as error:  # an older release's routing the profiler does not know: said clearly
        assert "routes" in str(error) and model_type in str(error)
        pytest.xfail(str(error))
    df = profiler.layers_df()
    assert len(df) >= 1
    assert df["layer"].is_unique
    handler = REGISTRY.get(model_type)
    if handler.exact:
        assert (df["flops"] == df["flops_measured"]).all(), df[["layer", "flops", "flops_measured"]]
        assert (df["tokens"] % 24 == 0).all() and (df["tokens"] > 0).all()  # looped layers run more than once
    else:
        assert not df["exact"].any() and df["note"].str.len().gt(0).all()
        assert "NOT exact" in profiler.scan_report()
