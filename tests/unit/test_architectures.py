"""Every MoE architecture in the installed transformers: discovered from transformers' own auto-mappings and held
against the handlers (handlers.REGISTRY) and the tiny configs (helpers.tiny_configs); then detection, exact FLOPs
(eager and grouped_mm) and top-k on a tiny model of each."""
import dataclasses
import functools
import inspect
import warnings

import pytest
import torch
import transformers
from transformers import CONFIG_MAPPING, PretrainedConfig
from transformers.models.auto import modeling_auto

from handlers import GENERIC, REGISTRY
from helpers.tiny_configs import (EAGER_ONLY_EXPERTS, available_model_types, build_tiny_model,
                                  older_release, supports_experts_implementation)
from runner import MOEProfiler, ProfilerError

MODEL_TYPES = available_model_types()
IMPLEMENTATIONS = ["eager", "grouped_mm"]

# -- discovery --------------------------------------------------------------------------------------------------------
# The auto-mappings searched. The causal LMs are what the project profiles; the image-text-to-text and multimodal-LM
# mappings hold text-only MoE LMs too (mistral4: Mistral4ForCausalLM) and the MoE language models of multimodal ones.
MAPPINGS = {
    "causal-lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "image-text-to-text": modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    "multimodal-lm": modeling_auto.MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
}
# A config is MoE when it declares a routed-expert count under one of the spellings the handlers read (a dotted name
# goes through a sub-config: dbrx's ffn_config.moe_num_experts).
EXPERT_COUNT_FIELDS = sorted({field for handler in [GENERIC, *REGISTRY.handlers.values()]
                              for field in handler.num_experts if isinstance(field, str)})

# MoE language models found in the mappings that the project does not support, each with its reason. The project
# profiles causal LMs (runner.job.models builds them with AutoModelForCausalLM); transformers has no causal-LM class for
# these, only the multimodal (or diffusion) model around them. test_not_supported_entries_still_hold checks every
# entry: still discovered, still without a handler, still no causal LM; remove an entry when one of those changes.
MULTIMODAL_ONLY = "the language model of the multimodal {}: transformers has no causal LM for it"
NOT_SUPPORTED: dict[str, str] = {
    "deepseek_ocr2_text": MULTIMODAL_ONLY.format("DeepseekOcr2ForConditionalGeneration"),
    "diffusion_gemma_text": "the denoiser of DiffusionGemmaForBlockDiffusion: block diffusion, not a causal LM",
    "ernie4_5_vl_moe_text": MULTIMODAL_ONLY.format("Ernie4_5_VLMoeForConditionalGeneration"),
    "glm4v_moe_text": MULTIMODAL_ONLY.format("Glm4vMoeForConditionalGeneration"),
    "glm5_next_text": MULTIMODAL_ONLY.format("Glm5NextForConditionalGeneration"),
    "hy_v4_vl_text": MULTIMODAL_ONLY.format("HYV4VLForConditionalGeneration"),
    "mistral_large4_text": MULTIMODAL_ONLY.format("MistralLarge4ForConditionalGeneration"),
    "muse_spark_text": MULTIMODAL_ONLY.format("MuseSparkForConditionalGeneration"),
    "qwen3_omni_moe_text": MULTIMODAL_ONLY.format("Qwen3OmniMoeThinkerForConditionalGeneration"),
    "qwen3_vl_moe_text": MULTIMODAL_ONLY.format("Qwen3VLMoeForConditionalGeneration"),
    "step3p5": MULTIMODAL_ONLY.format("Step3p7ForConditionalGeneration"),
    "unlimited_ocr_text": MULTIMODAL_ONLY.format("UnlimitedOcrForConditionalGeneration"),
}


def declared_fields(config_class: type) -> set[str]:
    if dataclasses.is_dataclass(config_class):
        fields = {f.name for f in dataclasses.fields(config_class)}
    else:
        fields = set(inspect.signature(config_class.__init__).parameters)
    return fields | set(getattr(config_class, "attribute_map", {}))


def declares(config_class: type, field: str) -> bool:
    head, _, rest = field.partition(".")
    if not rest:
        return head in declared_fields(config_class)
    sub = (getattr(config_class, "sub_configs", None) or {}).get(head)
    return isinstance(sub, type) and declares(sub, rest)


def language_config_class(config_class: type) -> type:
    """The config the profiler reads (`config.get_text_config()`): a multimodal model's `text_config` class, else the
    config itself. A `text_config` that is AutoConfig takes any language model: those are in the causal-LM mapping."""
    text = (getattr(config_class, "sub_configs", None) or {}).get("text_config")
    return text if isinstance(text, type) and issubclass(text, PretrainedConfig) else config_class


@functools.cache
def discover() -> dict[str, str]:
    """model_type of every MoE language model in the mappings -> where it was found first. (It imports ~300 config
    modules, ~3 s: called by the tests that need it, not at collection, which every xdist worker does.)"""
    found: dict[str, str] = {}
    for mapping, names in MAPPINGS.items():
        for model_type in names:
            config_class = language_config_class(CONFIG_MAPPING[model_type])
            if any(declares(config_class, field) for field in EXPERT_COUNT_FIELDS):
                found.setdefault(config_class.model_type, f"{mapping}: {model_type}")
    return found



def test_every_discovered_moe_type_has_a_handler():
    missing = {t: where for t, where in discover().items() if t not in REGISTRY.handlers and t not in NOT_SUPPORTED}
    assert not missing, (f"MoE model types of transformers {transformers.__version__} without a handler: add one to "
                         f"handlers/ (and a tiny config), or an entry to NOT_SUPPORTED with the reason: {missing}")


@pytest.mark.parametrize("model_type", sorted(NOT_SUPPORTED))
def test_not_supported_entries_still_hold(model_type):
    if model_type not in CONFIG_MAPPING:  # the entries are written for the newest release
        pytest.skip(f"{model_type} is not in transformers {transformers.__version__}")
    assert model_type in discover(), "no longer in transformers' mappings (or no longer MoE): remove the entry"
    assert model_type not in REGISTRY.handlers, "it has a handler now: remove the entry"
    assert model_type not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "transformers has a causal LM for it now"


def test_discovery_finds_every_registered_type():
    """A handler for a type transformers has but discovery misses means discovery is blind to a spelling."""
    assert not [t for t in REGISTRY.handlers if t in CONFIG_MAPPING and t not in discover()]


def test_expert_count_fields_cover_every_spelling():
    """Discovery sees only the spellings the handlers read: a config field that names a routed-expert count in
    another way would hide a new MoE type. Fields about experts that are not their count are named here."""
    not_a_count = ("shared", "share_", "per_tok", "top_k", "intermediate", "hidden", "capacity", "layer", "bias",
                   "policy", "selection", "zero_expert", "sink", "overlap", "swiglu_limit")
    classes = {CONFIG_MAPPING[t] for names in MAPPINGS.values() for t in names}
    classes |= {language_config_class(c) for c in classes}
    fields = {f for c in classes for f in declared_fields(c) if "expert" in f and not any(n in f for n in not_a_count)}
    assert fields <= set(EXPERT_COUNT_FIELDS), sorted(fields - set(EXPERT_COUNT_FIELDS))


def test_every_supported_type_has_a_tiny_config():
    assert sorted(MODEL_TYPES) == sorted(t for t in discover() if t in REGISTRY.handlers)


def test_eager_only_archs_are_named():
    eager_only = sorted(t for t in MODEL_TYPES if not supports_experts_implementation(t))
    named = {t for t in EAGER_ONLY_EXPERTS if t in MODEL_TYPES} | ({"aria_text"} & {t for t in MODEL_TYPES if older_release(t)})
    assert eager_only == sorted(named)


# -- exact FLOPs on a tiny model of each ------------------------------------------------------------------------------
def forward(model, profiler, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 128, (2, 12), generator=g)
    with torch.no_grad(), profiler.measure_flops():
        model(input_ids=x)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_analytic_flops_equal_measured(model_type, implementation):
    if implementation != "eager" and model_type in EAGER_ONLY_EXPERTS:
        pytest.skip(f"{model_type} has only its native eager experts: {EAGER_ONLY_EXPERTS[model_type]}")
    older = older_release(model_type)
    if older and model_type in ("doge", "aria_text"):  # transformers' own forward, or its experts, differ: named
        if model_type == "doge" or implementation != "eager":
            pytest.skip(older)
    model = build_tiny_model(model_type, experts_implementation=implementation)
    if older and model_type == "longcat_flash":  # the profiler refuses the older router: one clear error, checked
        with pytest.raises(ProfilerError, match="returned 2 outputs without"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forward(model, MOEProfiler(model, verbose=False))
        return
    with torch.no_grad():
        model(input_ids=torch.randint(2, 128, (1, 4)))  # a bare forward first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False)
    forward(model, profiler)
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
