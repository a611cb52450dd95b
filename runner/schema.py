"""Structured config (dataclasses in Hydra's ConfigStore) for `python -m runner`.

The schema is the first entry of conf/config.yaml's defaults list, so every value composed after it is type-checked
and every unknown key fails at composition time, naming the key. `validate(cfg)` (called by the job before anything is
loaded) converts the composed config into these dataclasses, which runs the cross-field checks in `__post_init__`.

No torch or transformers imports here: composing and validating a config stays fast.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import ConfigError

# conf/ ships inside the wheel as runner/conf (pyproject force-include); a checkout or editable install has <repo>/conf.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
if not CONFIG_DIR.is_dir():
    CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SLICE = re.compile(r"^\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\]$")
DIMENSIONS = ("num_experts", "top_k", "hidden_dim", "expert_dim", "shared_expert_dim")  # = handlers.base.DIMENSIONS
# config-field spellings of the routed-expert count, used to check topk before a model loads
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
SELECTOR_NAMES = ("topk", "kneedle", "cumsum", "entropy", "gap_ratio", "min_p")  # = runner.selectors.SELECTORS
DTYPES = ("auto", "float32", "bfloat16", "float16")
ON_ERROR = ("auto", "raise", "record")
QUALITY = ("auto", "always", "never")


class Weights(Enum):
    pretrained = "pretrained"  # from_pretrained(hf_id): local cache / directory, or the hub when online
    random = "random"  # full architecture from model.config, seeded random init
    meta = "meta"  # built on the meta device: analytic FLOPs and parameter counts only, no forward pass


class DatasetKind(Enum):
    builtin = "builtin"  # the text shipped in runner/corpus.py
    hf = "hf"  # datasets.load_dataset(path, config_name, split=split + slice, data_files=...)
    local = "local"  # local .txt / .jsonl / .json / .parquet files


@dataclass
class ModelConfig:
    name: str = MISSING  # short slug: results partition `model=<name>`
    model_type: str = MISSING  # transformers model_type (AutoConfig.for_model)
    hf_id: Optional[str] = None  # hub id or local directory, for weights=pretrained
    weights: Weights = Weights.pretrained
    default_topk: Optional[int] = None  # the checkpoint's own top-k; null: read it from the model
    config: Dict[str, Any] = field(default_factory=dict)  # AutoConfig.for_model(model_type, **config) for random/meta
    revision: Optional[str] = None
    trust_remote_code: bool = False
    tokenizer: Optional[str] = None  # null: hf_id for pretrained, the built-in byte tokenizer otherwise; "byte" forces it
    experts_implementation: Optional[str] = None  # transformers experts kernel (eager|batched_mm|grouped_mm); null: default


@dataclass
class DatasetConfig:
    kind: DatasetKind = DatasetKind.builtin
    name: Optional[str] = None  # label in the results; null: derived from what is loaded (runner.data.label)
    path: Optional[str] = None  # hf: dataset name or builder ("json", "parquet", a saved dataset dir); local: file or glob
    config_name: Optional[str] = None  # hf: dataset configuration
    data_files: Optional[Any] = None  # hf: data_files for builders such as json/csv/parquet
    split: str = "train"
    slice: Optional[str] = None  # documents to keep, Python/datasets slice syntax: "[:64]", "[10:20]", "[:10%]"
    field: str = "text"  # text column / JSON key
    format: str = "auto"  # local: auto (by extension) | text | jsonl | json | parquet


@dataclass
class DeviceConfig:
    name: str = "cpu"  # cpu | cuda | auto
    device: str = "cpu"  # torch device for inputs / models built in memory
    device_map: Optional[str] = None  # from_pretrained device_map ("auto" spreads over GPUs; needs accelerate)
    dtype: str = "float32"  # auto | float32 | bfloat16 | float16
    num_threads: Optional[int] = None  # CPU intra-op threads; null: 1 for models under 100M parameters, else torch's


@dataclass
class SelectorConfig:
    """`selector=kneedle selector.k_max=8`: the name and its parameters side by side (null = not given)."""

    name: str = "topk"  # topk = the model's own routing at `topk`; others: per-token dynamic k (runner.selectors)
    k_max: Optional[int] = None  # null: the job's topk
    k_min: Optional[int] = None
    k: Optional[int] = None  # selector 'topk' under a k_max pool (library use); not for the model's own routing
    threshold: Optional[float] = None  # cumsum
    ratio: Optional[float] = None  # gap_ratio
    alpha: Optional[float] = None  # min_p

    @property
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and getattr(self, f.name) is not None}


@dataclass
class DimValues:
    num_experts: Optional[int] = None
    top_k: Optional[int] = None
    hidden_dim: Optional[int] = None
    expert_dim: Optional[int] = None
    shared_expert_dim: Optional[int] = None

    def given(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class DimsConfig:
    override: DimValues = field(default_factory=DimValues)  # above model.config in the priority chain
    fallback: DimValues = field(default_factory=DimValues)  # below model.config and module introspection


@dataclass
class RunnerConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    dims: DimsConfig = field(default_factory=DimsConfig)
    topk: Optional[int] = None  # null: the model's own top-k
    seq_len: int = 128  # tokens per packed block (no padding)
    batch_size: int = 8  # blocks per forward pass
    max_batches: Optional[int] = None  # cap on batches; null: the whole slice
    measure_flops: bool = False  # count FLOPs on every batch (false: on the first batch only)
    quality: str = "auto"  # reference pass for KL / top-1 agreement: auto (when routing differs) | always | never
    latency: bool = False  # time each MoE block (adds hooks)
    seed: int = 0
    tag: str = "dev"
    out_root: str = "outputs"
    results_dir: str = "outputs/results"
    resume: bool = False  # skip jobs whose resolved config already has an ok row in results_dir
    on_error: str = "auto"  # auto (record in multirun, raise in a single run) | raise | record
    progress: Optional[bool] = None  # progress bar; null: only on a TTY
    debug: bool = False  # show tracebacks instead of one-line errors

    def __post_init__(self) -> None:  # runs in OmegaConf.to_object / validate()
        check(self)


# keys that say where results go or how errors are reported, not what is measured: left out of the config hash
NON_RESULT_KEYS = ("out_root", "results_dir", "resume", "on_error", "progress", "debug", "tag")


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"{key}: {message}")


def expert_count(model: ModelConfig, dims: DimsConfig) -> Optional[int]:
    """Routed experts as far as the config says (override first), or None when only the checkpoint knows."""
    if dims.override.num_experts is not None:
        return dims.override.num_experts
    for name in EXPERT_COUNT_FIELDS:
        value = model.config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check(cfg: RunnerConfig) -> None:
    """Cross-field checks that types alone cannot express. Raises ConfigError naming the key."""
    m, d = cfg.model, cfg.dataset
    if not SLUG.match(m.name):
        _fail("model.name", f"{m.name!r} must be a path-safe slug (letters, digits, _ . -)")
    if m.weights is Weights.pretrained and not m.hf_id:
        _fail("model.hf_id", "weights=pretrained needs a hub id or a local directory")
    if m.default_topk is not None and m.default_topk < 1:
        _fail("model.default_topk", f"must be >= 1, got {m.default_topk}")
    experts = expert_count(m, cfg.dims)
    if cfg.topk is not None:
        if cfg.topk < 1:
            _fail("topk", f"must be a positive integer (or null for the model's default), got {cfg.topk}")
        if experts is not None and cfg.topk > experts:
            _fail("topk", f"{cfg.topk} exceeds the {experts} experts of model {m.name!r}")
    for which in ("override", "fallback"):
        for dim, value in getattr(cfg.dims, which).given().items():
            if value < (0 if dim == "shared_expert_dim" else 1):
                _fail(f"dims.{which}.{dim}", f"must be positive, got {value}")
    if cfg.seq_len < 2:
        _fail("seq_len", f"must be >= 2 (next-token targets need two tokens), got {cfg.seq_len}")
    if cfg.batch_size < 1:
        _fail("batch_size", f"must be >= 1, got {cfg.batch_size}")
    if cfg.max_batches is not None and cfg.max_batches < 1:
        _fail("max_batches", f"must be >= 1 or null, got {cfg.max_batches}")
    for key, value, allowed in (("on_error", cfg.on_error, ON_ERROR), ("quality", cfg.quality, QUALITY),
                                ("device.dtype", cfg.device.dtype, DTYPES),
                                ("device.name", cfg.device.name, ("cpu", "cuda", "auto"))):
        if value not in allowed:
            _fail(key, f"{value!r} is not one of {', '.join(allowed)}")
    if cfg.device.num_threads is not None and cfg.device.num_threads < 1:
        _fail("device.num_threads", f"must be >= 1 or null, got {cfg.device.num_threads}")
    if not re.match(r"^(cpu|cuda|meta)(:\d+)?$", cfg.device.device):
        _fail("device.device", f"{cfg.device.device!r} is not a torch device such as cpu, cuda or cuda:1")
    if d.kind is DatasetKind.hf and not d.path:
        _fail("dataset.path", "dataset=hf needs a path: a hub id (with dataset.config_name if it has several), a "
              "builder on local files (dataset.path=json dataset.data_files=FILE) or a save_to_disk directory; "
              "or use dataset=wikitext2")
    if d.kind is DatasetKind.local and not d.path:
        _fail("dataset.path", "dataset=local needs a path: a file or a glob")
    if d.slice is not None and not SLICE.match(d.slice):
        _fail("dataset.slice", f"{d.slice!r} is not a slice such as '[:64]', '[10:20]' or '[:10%]'")
    if d.format not in ("auto", "text", "jsonl", "json", "parquet"):
        _fail("dataset.format", f"{d.format!r} is not one of auto, text, jsonl, json, parquet")
    if d.name is not None and not SLUG.match(d.name):
        _fail("dataset.name", f"{d.name!r} must be a path-safe slug")
    check_selector(cfg.selector, experts)


def check_selector(selector: SelectorConfig, experts: Optional[int]) -> None:
    name, params = selector.name, dict(selector.params)
    if name not in SELECTOR_NAMES:
        _fail("selector.name", f"unknown selector {name!r}; valid selectors: {', '.join(SELECTOR_NAMES)}")
    if name == "topk":
        if params:
            _fail(f"selector.{next(iter(params))}", "selector 'topk' is the model's own routing and takes no "
                  "parameters; set topk=K")
        return
    for key, value in params.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            _fail(f"selector.{key}", f"must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            _fail(f"selector.{key}", f"must be finite, got {value!r}")
    if experts is not None:  # the full check again, with the model's real expert count, when the model is loaded
        from .selectors import SelectorError, validate_params

        try:
            validate_params(name, {k: v for k, v in params.items() if v is not None}, experts)
        except SelectorError as exc:
            _fail(f"selector={name}", str(exc))


def validate(cfg: DictConfig) -> RunnerConfig:
    """Composed config -> RunnerConfig, failing with ConfigError (one line, naming the key) on any problem."""
    from omegaconf.errors import OmegaConfBaseException

    known = {f.name for f in dataclasses.fields(RunnerConfig)}
    extra = sorted(set(cfg.keys()) - known - {"hydra"})
    if extra:
        raise ConfigError(f"unknown top-level key(s) {', '.join(extra)} (a typo, or a stray '+' override?)")
    try:
        plain = OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"}) if "hydra" in cfg else cfg
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunnerConfig), plain))
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(one_line(exc)) from None
    assert isinstance(obj, RunnerConfig)
    return obj


def one_line(exc: BaseException) -> str:
    """OmegaConf/Hydra messages carry 'full_key: ...' detail lines; keep the message and the key."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
    head = lines[0]
    return f"{key}: {head}" if key and key not in head else head


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="runner_schema", node=RunnerConfig)
