"""Every config composes and validates; typos and bad values fail before anything loads; full-size dims are right."""
from __future__ import annotations

import itertools

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers import ROOT
from helpers.jobs import compose_config as make
from runner.errors import ConfigError
from runner.config.schema import CONFIG_DIR, RunnerConfig, Weights
from runner.config.help import register_configs
from runner.config.checks import validate

register_configs()

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
TINY = [m for m in MODELS if m.endswith("_tiny")]
# checkpoints shipped in the package (runner/trained), named by `${trained:NAME}`
TRAINED = [m for m in MODELS if "${trained:" in (CONFIG_DIR / "model" / f"{m}.yaml").read_text()]
FULL = [m for m in MODELS if not m.endswith("_tiny") and m not in TRAINED]
DEVICES = sorted(p.stem for p in (CONFIG_DIR / "device").glob("*.yaml"))
SELECTORS = sorted(p.stem for p in (CONFIG_DIR / "selector").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))

# survey §10: (MoE layers, FLOPs/token of one MoE layer at the default k, total params)
SURVEY = {
    "olmoe": (16, 100_925_440, 6.92e9),
    "mixtral": (32, 704_708_608, 46.70e9),
    "qwen_moe": (24, 138_661_888, 14.32e9),
    "qwen3_moe": (48, 76_021_760, 30.53e9),
    "deepseek_v2_lite": (26, 138_674_176, 15.71e9),
    "deepseek_v3": (58, 796_393_472, 671.03e9),
    "gpt_oss": (24, 199_249_920, 20.91e9),
    "granite_moe": (24, 25_231_360, 1.33e9),
    "phimoe": (32, 314_703_872, 41.87e9),
}
HUB_IDS = {
    "olmoe": "allenai/OLMoE-1B-7B-0924", "mixtral": "mistralai/Mixtral-8x7B-v0.1", "qwen_moe": "Qwen/Qwen1.5-MoE-A2.7B",
    "qwen3_moe": "Qwen/Qwen3-30B-A3B", "deepseek_v2_lite": "deepseek-ai/DeepSeek-V2-Lite",
    "deepseek_v3": "deepseek-ai/DeepSeek-V3", "gpt_oss": "openai/gpt-oss-20b",
    "granite_moe": "ibm-granite/granite-3.0-1b-a400m-base", "phimoe": "microsoft/Phi-3.5-MoE-instruct",
}


def test_groups_are_complete():
    assert set(FULL) == set(SURVEY)
    assert {"olmoe_tiny", "mixtral_tiny", "qwen2_moe_tiny", "deepseek_v3_tiny"} <= set(TINY)
    assert set(DEVICES) == {"cpu", "cuda", "auto"}
    assert set(SELECTORS) == {"router", "kneedle", "cumsum", "entropy", "gap_ratio", "min_p", "random_k", "layer_k"}
    assert set(DATASETS) == {"builtin", "hf", "local", "pydoc_heldout", "wikitext2"}
    assert TRAINED == ["olmoe_pydoc"]
    assert {"smoke", "paper_topk"} <= set(EXPERIMENTS)


def test_default_config():
    from hydra import compose, initialize_config_dir

    from runner.trained import TRAINED_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="test"):
        cfg = compose("config")  # the true default (make() names olmoe_tiny)
    conf = validate(cfg)
    assert isinstance(conf, RunnerConfig)
    # the trained model shipped in the package, by its absolute directory: offline from any working directory
    assert conf.model.name == "olmoe_pydoc" and conf.model.weights is Weights.pretrained
    assert conf.model.hf_id == str(TRAINED_DIR / "olmoe_pydoc_bytes") and (TRAINED_DIR / "olmoe_pydoc_bytes").is_dir()
    assert conf.topk == conf.model.default_topk == 2  # topk follows the model by interpolation
    assert conf.selector.name == "router" and conf.dataset.name == "builtin" and conf.device.name == "cpu"
    assert conf.results_dir.endswith("results")


@pytest.mark.parametrize("model,device", list(itertools.product(MODELS, DEVICES)))
def test_every_model_and_device_validates(model, device):
    conf = validate(make(f"model={model}", f"device={device}"))
    assert conf.model.name == model
    assert conf.model.trust_remote_code is False
    assert conf.topk == conf.model.default_topk
    if model in HUB_IDS:
        assert conf.model.hf_id == HUB_IDS[model] and conf.model.weights is Weights.pretrained


@pytest.mark.parametrize("selector", SELECTORS)
def test_every_selector_validates(selector):
    conf = validate(make(f"selector={selector}", "topk=4"))
    assert conf.selector.name == selector
    if selector != "router":
        assert conf.selector.k_max is None and conf.selector.k_min == 1  # k_max null: the job's topk
        conf = validate(make(f"selector={selector}", "selector.k_max=4"))  # the issue's `selector.k_max=8` form
        assert conf.selector.params["k_max"] == 4


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_and_each_of_its_jobs_validates(experiment):
    cfg = make(f"experiment={experiment}", hydra=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{experiment} declares no sweep"
    grid = [[f"{k}={v}" for v in str(values).split(",")] for k, values in params.items()]
    for job in itertools.product(*grid):
        validate(make(f"experiment={experiment}", *job))


def test_dataset_groups():
    assert validate(make("dataset=wikitext2")).dataset.split == "test"
    conf = validate(make("dataset=local", "dataset.path=/data/x.jsonl"))
    assert conf.dataset.kind.value == "local" and conf.dataset.field == "text"
    with pytest.raises(Exception, match="path"):  # local needs a path (??? is mandatory)
        validate(make("dataset=local"))


def test_launcher_presets_compose():
    slurm = make("hydra/launcher=slurm", hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.gpus_per_node == 1 and slurm.array_parallelism > 0 and slurm.timeout_min > 0 and "partition" in slurm
    local = make("hydra/launcher=local_parallel", hydra=True).hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2
    assert make("hydra/launcher=submitit_local", hydra=True).hydra.launcher._target_.endswith("LocalLauncher")


# -- composition-time errors (typos, unknown options, wrong types) -----------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("topK=4", "topK"),
    ("model.hiden_size=1", "hiden_size"),
    ("dims.override.num_expert=4", "num_expert"),
    ("model=olmo", "model/olmo"),
    ("dataset=nope", "dataset/nope"),
    ("device=tpu", "device/tpu"),
    ("selector=foo", "selector/foo"),
    ("experiment=paper", "experiment/paper"),
    ("topk=four", "four"),
    ("topk=1.5", "1.5"),
    ("model.weights=cached", "cached"),
    ("seq_len=[1,2]", "seq_len"),
    ("selector.treshold=0.5", "treshold"),
    ("selector.threshold=high", "high"),
])
def test_composition_errors_name_the_key(override, needle):
    with pytest.raises(ConfigCompositionException) as info:
        make(override)
    text = str(info.value) + str(info.value.__cause__ or "")
    assert needle in text


@pytest.mark.parametrize("overrides,needle", [
    (["topk=0"], "topk: must be a positive integer"),
    (["topk=-2"], "topk: must be a positive integer"),
    (["topk=9"], "topk: 9 exceeds the 8 experts"),
    (["model=mixtral", "topk=9"], "topk: 9 exceeds the 8 experts"),
    (["+topK=4"], "topK: unknown key (did you mean topk?)"),
    (["seq_len=1"], "seq_len"),
    (["batch_size=0"], "batch_size"),
    (["on_error=ignore"], "on_error"),
    (["device.dtype=float8"], "device.dtype"),
    (["dataset.slice=\"1:2\""], "dataset.slice"),
    (["selector=cumsum", "selector.threshold=1.5"], "threshold must be in [0, 1]"),
    (["selector=kneedle", "selector.alpha=0.1"], "unknown parameter(s) alpha"),
    (["selector=kneedle", "selector.k_max=64"], "exceeds the number of experts"),
    (["selector=router", "selector.k=2"], "takes no parameters"),
    (["selector.name=topk"], "selector 'topk' is now called 'router' (the model's own routing); use selector=router"),
    (["model.name=a/b"], "model.name"),
    (["dims.override.expert_dim=0"], "dims.override.expert_dim"),
    (["model.weights=pretrained"], "model.hf_id"),
    (["compile_mode=reduce-overhead"], "compile_mode: takes effect only with compile=true"),
    (["compile=true", "compile_mode=fast"], "compile_mode: 'fast' is not one of default, reduce-overhead"),
    (["decode_tokens=-1"], "decode_tokens: must be >= 0"),
    (["device.max_memory={cpu: 1GiB}"], "device.max_memory: takes effect only with device.device_map"),
    (["device=auto", "device.device_map=everywhere"], "device.device_map: 'everywhere' is not one of auto, balanced"),
    (["device=auto", "device.max_memory={gpu0: 1GiB}"], "key 'gpu0' is not a GPU index (0, 1, ...), cpu or disk"),
    (["device=auto", "device.max_memory={0: lots}"], "0: 'lots' is not a size such as 70GiB"),
    (["device=auto", "device.max_memory=70GiB"], "device.max_memory: must be a mapping"),
])
def test_validation_errors_are_one_line_config_errors(overrides, needle):
    with pytest.raises(ConfigError) as info:
        validate(make(*overrides))
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_dims_and_interpolation():
    conf = validate(make("dims.override.expert_dim=16", "dims.fallback.shared_expert_dim=0", "model=mixtral_tiny"))
    assert conf.dims.override.given() == {"expert_dim": 16}
    assert conf.dims.fallback.given() == {"shared_expert_dim": 0}
    assert validate(make("model=mixtral")).topk == 2
    assert validate(make("model=olmoe", "topk=null")).topk is None


def test_paper_sweep_is_declared_in_config():
    cfg = make("experiment=paper_topk", hydra=True)
    assert cfg.model.name == "olmoe" and cfg.tag == "paper_topk"
    assert str(cfg.hydra.sweeper.params.topk) == "1,2,4,8,16"
    assert "kneedle" in str(cfg.hydra.sweeper.params.selector)
    assert OmegaConf.select(cfg, "hydra.mode") is None  # no hydra.mode in experiments (Hydra 1.4 rejects it)


# -- full-size architectures on the meta device give the survey's numbers -----------------------------------------------
@pytest.mark.parametrize("model", FULL)
def test_full_size_meta_numbers_match_the_survey(model):
    from runner.job.models import load
    from runner.profiler import MOEProfiler

    conf = validate(make(f"model={model}", "model.weights=meta"))
    loaded = load(conf.model, conf.device, conf.seed)
    profiler = MOEProfiler(loaded.model, verbose=False)
    try:
        layers, per_layer, params = SURVEY[model]
        flops = profiler.flops_per_token()
        assert len(flops) == layers
        assert int(flops["flops"].iloc[0]) == per_layer
        assert round(profiler.param_counts()["params_total"] / 1e7) == round(params / 1e7)
        assert profiler.top_k == conf.model.default_topk
    finally:
        profiler.detach()


def test_config_dir_is_the_repo_conf():
    assert CONFIG_DIR == ROOT / "conf"
