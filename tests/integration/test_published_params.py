"""The active parameters of every shipped full-size checkpoint (conf/model/*.yaml, built on the meta device from the
config values in the conf: nothing is downloaded) equal the figure its authors publish, under the convention they
count it in: with the embeddings (`params_active`) or without the input embedding table
(`params_active_nonembedding`). Authors round or truncate: the figures pinned are ours, in billions to 2 decimals,
and the published one is in the comment."""
import contextlib
import warnings
from dataclasses import replace

import pytest

from runner.job import models
from runner.baseline.compute import model_configs
from runner.profiler import MOEProfiler
from runner.config.schema import DeviceConfig, Weights

EMBEDDINGS, NO_EMBEDDINGS = "params_active", "params_active_nonembedding"
PUBLISHED = {  # conf name -> (the authors' convention, our count in billions)
    "olmoe": (EMBEDDINGS, 1.28),  # OLMoE paper (arXiv 2409.02060): 1.3B active of 6.9B
    "mixtral": (EMBEDDINGS, 12.88),  # Mixtral of Experts (arXiv 2401.04088): 13B active (12.9B in Mistral's post)
    "qwen_moe": (EMBEDDINGS, 2.69),  # Qwen1.5-MoE-A2.7B: 2.7B activated
    "qwen3_moe": (EMBEDDINGS, 3.35),  # Qwen3-30B-A3B model card: 3.3B activated
    "deepseek_v3": (EMBEDDINGS, 37.55),  # DeepSeek-V3 report (arXiv 2412.19437): 37B activated (truncated)
    "phimoe": (EMBEDDINGS, 6.64),  # Phi-3.5-MoE model card: 6.6B active
    "granite_moe": (EMBEDDINGS, 0.43),  # granite-3.0-1b-a400m: 400M active (its LM head is tied to the embeddings)
    "deepseek_v2_lite": (NO_EMBEDDINGS, 2.45),  # DeepSeek-V2 paper (arXiv 2405.04434): V2-Lite 2.4B activated; 2.66 with
    "gpt_oss": (NO_EMBEDDINGS, 3.61),  # gpt-oss model card: gpt-oss-20b 3.6B active; 4.19 with the embeddings
}


def test_every_shipped_checkpoint_is_pinned():
    from runner.trained import is_shipped

    # the tiny models and the checkpoints in the package (runner/trained) are ours: no published figure
    ours = [c.name for c in model_configs() if "tiny" in c.name or is_shipped(c.hf_id)]
    assert ours and sorted(PUBLISHED) == sorted(c.name for c in model_configs() if c.name not in ours)


@contextlib.contextmanager
def on_meta(name: str):
    """(the loaded model, a profiler on it) of shipped conf `name`, built on the meta device from the conf's values."""
    config = next(c for c in model_configs() if c.name == name)
    models.clear_cache()
    loaded = models.load(replace(config, weights=Weights.meta), DeviceConfig(name="cpu", device="cpu"), 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profiler = MOEProfiler(loaded.model, verbose=False)
        yield loaded, profiler
        profiler.detach()
    finally:
        models.clear_cache()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_active_parameters_match_the_published_figure(name):
    convention, billions = PUBLISHED[name]
    with on_meta(name) as (_, profiler):
        counts = profiler.param_counts()
    assert round(counts[convention] / 1e9, 2) == billions


def test_deepseek_v3_decode_and_cache_as_docs_flops_md_says():
    """DeepSeek-V3 (meta, its checkpoint's bf16): the cache holds the 512 + 64 latent per layer, and a decode step at
    a 4,096-token context re-expands it at every position; docs/flops.md quotes both."""
    from helpers import ROOT
    from runner.profiler.cost_run import element_bytes

    with on_meta("deepseek_v3") as (loaded, profiler):
        cost, moe = profiler.forward_cost(), float(profiler.flops_per_token(8)["flops"].sum())
        kv, element = cost.kv_bytes_per_token(4096, element_bytes(loaded.model)), element_bytes(loaded.model)
        decode = cost.decode_per_token(1, 4096, moe_per_token=moe)
    assert loaded.dtype == "bfloat16" and element == 2 and kv == 61 * (512 + 64) * 2
    doc = (ROOT / "docs" / "flops.md").read_text()
    assert f"{kv:,.0f} bytes per token in bf16" in doc and f"{decode / 1e9:,.0f} GFLOP per token at k=8" in doc
