"""Structured config (dataclasses in Hydra's ConfigStore) for `python -m runner`.

The schema is the first entry of conf/config.yaml's defaults list, so every value composed after it is type-checked
and every unknown key fails at composition time, naming the key. `validate(cfg)` (called by the job before anything is
loaded) converts the composed config into these dataclasses, which runs the cross-field checks in `__post_init__`.

No torch or transformers imports here, nor in what this imports (handlers, runner.profiler.selector_names,
runner.tokenizer): composing and validating a config stays fast.
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

from handlers.base import EXPERT_COUNT_FIELDS

from .errors import ConfigError
from .profiler.selector_names import SELECTOR_NAMES

# `selector=router`: the model's own router at `topk`, no per-token selection. The other app selectors are the
# library's dynamic-k policies (its static "topk" policy is for library use: the router does that itself).
OWN_ROUTING = "router"
APP_SELECTORS = (OWN_ROUTING, *(name for name in SELECTOR_NAMES if name != "topk"))
from .tokenizer import BYTE_VOCAB_SIZE

# conf/ ships inside the wheel as runner/conf (pyproject force-include); a checkout or editable install has <repo>/conf.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
if not CONFIG_DIR.is_dir():
    CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SLICE = re.compile(r"^\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\]$")
# config-field spellings of the model's own top-k, checked against the expert count before a model loads
TOPK_FIELDS = ("num_experts_per_tok", "moe_topk", "num_experts_per_token", "moe_k")
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1  # the results columns: seed is int64, the other integer keys int32
DTYPES = ("auto", "float32", "bfloat16", "float16")
ON_ERROR = ("auto", "raise", "record")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
QUALITY = ("auto", "always", "never")


class Weights(Enum):
    pretrained = "pretrained"  # from_pretrained(hf_id): local cache / directory, or the hub when online
    random = "random"  # full architecture from model.config, seeded random init
    meta = "meta"  # built on the meta device: analytic FLOPs and parameter counts only, no forward pass


class DatasetKind(Enum):
    builtin = "builtin"  # the text shipped in runner/corpus.py
    hf = "hf"  # datasets.load_dataset(path, config_name, split=split + slice, data_files=...)
    local = "local"  # local .txt / .jsonl / .json / .parquet files


def doc(help: str, default: Any = MISSING, factory: Any = None) -> Any:
    """A config field with its one line of help, printed by `python -m runner --help` (help_text below)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """the MoE model and how to build it"""

    name: str = doc("short slug; the results partition model=<name>")
    model_type: str = doc("transformers model_type (AutoConfig.for_model)")
    hf_id: Optional[str] = doc("hub id or local directory, for weights=pretrained", None)
    weights: Weights = doc("pretrained (from_pretrained: cache, directory or hub) | random (seeded init from "
                           "model.config) | meta (analytic FLOPs and params only)", Weights.pretrained)
    default_topk: Optional[int] = doc("the checkpoint's own top-k; null: read it from the model", None)
    config: Dict[str, Any] = doc("kwargs for AutoConfig.for_model(model_type, ...) for random/meta: "
                                 "model.config.hidden_size=...", factory=dict)
    revision: Optional[str] = doc("hub revision (branch, tag or commit) for weights=pretrained", None)
    trust_remote_code: bool = doc("allow the checkpoint's own Python code (off unless set)", False)
    tokenizer: Optional[str] = doc("null: hf_id for pretrained, the built-in byte tokenizer otherwise; byte forces it; "
                                   "else a hub id or directory", None)
    experts_implementation: Optional[str] = doc("transformers experts kernel: eager | batched_mm | grouped_mm; "
                                                "null: transformers' default", None)


@dataclass
class DatasetConfig:
    """where the text comes from and which slice of it"""

    kind: DatasetKind = doc("builtin (runner/corpus.py) | hf (datasets.load_dataset) | local (files)",
                            DatasetKind.builtin)
    name: Optional[str] = doc("label in the results; null: derived from what is loaded", None)
    path: Optional[str] = doc("hf: hub id, builder (json, csv, parquet, text) or save_to_disk dir; local: file or glob",
                              None)
    config_name: Optional[str] = doc("hf: the dataset's configuration", None)
    data_files: Optional[Any] = doc("hf: data_files for builders such as json, csv, parquet", None)
    split: str = doc("hf: the split to read", "train")
    slice: Optional[str] = doc("documents to keep, Python/datasets syntax: '[:64]', '[10:20]', '[:10%]'", None)
    field: str = doc("text column / JSON key", "text")
    format: str = doc("local: auto (by extension) | text | jsonl | json | parquet", "auto")


@dataclass
class DeviceConfig:
    """where the model runs, in which dtype"""

    name: str = doc("cpu | cuda | auto", "cpu")
    device: str = doc("torch device of the inputs and of models built in memory: cpu, cuda, cuda:1", "cpu")
    device_map: Optional[str] = doc("from_pretrained device_map (auto spreads over GPUs; needs accelerate)", None)
    dtype: str = doc("auto | float32 | bfloat16 | float16", "float32")
    num_threads: Optional[int] = doc("CPU intra-op threads; null: 1 for models under 100M parameters, else torch's",
                                     None)


@dataclass
class SelectorConfig:
    """per-token routing: the model's own top-k, or a dynamic-k selector and its parameters (selector.k_max=8)"""

    name: str = doc("router (the model's own routing at topk) | kneedle | cumsum | entropy | gap_ratio | min_p", OWN_ROUTING)
    k_max: Optional[int] = doc("candidate experts per token; null: the job's topk", None)
    k_min: Optional[int] = doc("fewest experts per token", None)
    k: Optional[int] = doc("selector topk under a k_max pool (library use), not the model's own routing", None)
    threshold: Optional[float] = doc("cumsum: smallest k whose probability mass reaches it (top-p)", None)
    ratio: Optional[float] = doc("gap_ratio: cut where p(i)/p(i+1) reaches it", None)
    alpha: Optional[float] = doc("min_p: keep experts with p >= alpha * p_max", None)

    @property
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and getattr(self, f.name) is not None}


@dataclass
class DimValues:  # one field per handlers.base.DIMENSIONS (tests/unit/test_definitions.py)
    num_experts: Optional[int] = doc("routed experts", None)
    top_k: Optional[int] = doc("experts per token", None)
    hidden_dim: Optional[int] = doc("model width H", None)
    expert_dim: Optional[int] = doc("expert intermediate width I", None)
    shared_expert_dim: Optional[int] = doc("shared expert width (0: none)", None)

    def given(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class DimsConfig:
    """MoE dimensions given by hand, for the profiler's priority chain"""

    override: DimValues = doc("dimensions above model.config", factory=DimValues)
    fallback: DimValues = doc("dimensions below model.config and module introspection", factory=DimValues)


@dataclass
class RunnerConfig:
    model: ModelConfig = doc(ModelConfig.__doc__)
    dataset: DatasetConfig = doc(DatasetConfig.__doc__, factory=DatasetConfig)
    device: DeviceConfig = doc(DeviceConfig.__doc__, factory=DeviceConfig)
    selector: SelectorConfig = doc(SelectorConfig.__doc__, factory=SelectorConfig)
    dims: DimsConfig = doc(DimsConfig.__doc__, factory=DimsConfig)
    topk: Optional[int] = doc("experts per token (sweep it: topk=1,2,4 -m); null: the model's own top-k", None)
    seq_len: int = doc("tokens per packed block (no padding)", 128)
    batch_size: int = doc("blocks per forward pass", 8)
    max_batches: Optional[int] = doc("cap on batches; null: the whole slice", None)
    measure_flops: bool = doc("count FLOPs on every batch (false: on the first batch only)", False)
    quality: str = doc("reference pass for KL and top-1 agreement: auto (when routing differs) | always | never",
                       "auto")
    latency: bool = doc("time each MoE block (adds hooks; eager only)", False)
    compile: bool = doc("torch.compile the model once the profiler is attached (the profiler traces without "
                        "graph breaks)", False)
    compile_mode: Optional[str] = doc("torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | "
                                      "max-autotune-no-cudagraphs; null: torch's default", None)
    decode_tokens: int = doc("after each batch's prompt, generate this many tokens greedily with a static cache "
                             "(compiled, CUDA graphs on a GPU) and record TTFT, TPOT and the decode routing; 0: none",
                             0)
    seed: int = doc("seed for random weights", 0)
    tag: str = doc("free label stored with every row", "dev")
    out_root: str = doc("where runs/, multirun/ and results/ go ($RUNNER_OUT, else outputs)", "outputs")
    results_dir: str = doc("the parquet dataset shared by all runs and sweeps (out_root/results)", "outputs/results")
    resume: bool = doc("skip jobs whose resolved config already has an ok row in results_dir", False)
    on_error: str = doc("auto (record in a sweep, raise in a single run) | raise | record", "auto")
    progress: Optional[bool] = doc("progress bar; null: only on a terminal", None)
    debug: bool = doc("show tracebacks instead of one-line errors", False)

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
    check_int_ranges(cfg)
    experts = expert_count(m, cfg.dims)
    for name in TOPK_FIELDS:
        value = m.config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                _fail(f"model.config.{name}", f"must be >= 1, got {value}")
            if experts is not None and value > experts:
                _fail(f"model.config.{name}", f"{value} exceeds the {experts} experts of model {m.name!r}; "
                      f"use a value <= {experts} (or topk=K to change the live top-k)")
    if cfg.dims.override.top_k is not None:
        _fail("dims.override.top_k", f"{cfg.dims.override.top_k} would relabel the top-k but not change the routing; "
              f"set topk={cfg.dims.override.top_k} instead (dims.fallback.top_k when the profiler cannot find it)")
    # model.config builds the model only for weights=random (a checkpoint brings its own; it is checked once loaded)
    vocab = m.config.get("vocab_size")
    if isinstance(vocab, int) and not isinstance(vocab, bool) and m.weights is Weights.random:
        if m.tokenizer in (None, "byte") and vocab < BYTE_VOCAB_SIZE:
            _fail("model.config.vocab_size", f"{vocab} is smaller than the byte tokenizer's {BYTE_VOCAB_SIZE} ids; "
                  f"use vocab_size >= {BYTE_VOCAB_SIZE}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            token = m.config.get(name)
            if isinstance(token, int) and not isinstance(token, bool) and not 0 <= token < vocab:
                _fail(f"model.config.{name}", f"{token} is outside the vocabulary (vocab_size={vocab}); "
                      f"use an id below {vocab} or a larger vocab_size")
    positions = m.config.get("max_position_embeddings")
    if isinstance(positions, int) and not isinstance(positions, bool) and m.weights is Weights.random:
        check_positions(cfg.seq_len, cfg.decode_tokens, positions)
    if cfg.topk is not None:
        if cfg.topk < 1:
            _fail("topk", f"must be a positive integer (or null for the model's default), got {cfg.topk}")
        if experts is not None and cfg.topk > experts:
            _fail("topk", f"{cfg.topk} exceeds the {experts} experts of model {m.name!r}")
    for which in ("override", "fallback"):
        for dim, value in getattr(cfg.dims, which).given().items():
            if value < (0 if dim == "shared_expert_dim" else 1):
                _fail(f"dims.{which}.{dim}", f"must be positive, got {value}")
    if cfg.compile_mode is not None:
        if cfg.compile_mode not in COMPILE_MODES:
            _fail("compile_mode", f"{cfg.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if not cfg.compile:
            _fail("compile_mode", "takes effect only with compile=true; set compile=true or drop compile_mode")
    if cfg.decode_tokens < 0:
        _fail("decode_tokens", f"must be >= 0, got {cfg.decode_tokens}")
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


def check_positions(seq_len: int, decode_tokens: int, positions: int) -> None:
    """seq_len (plus the generated tokens) must fit the model's position table; ConfigError naming both numbers."""
    if seq_len + decode_tokens > positions:
        what = f"seq_len={seq_len}" + (f" + decode_tokens={decode_tokens}" if decode_tokens else "")
        _fail("seq_len", f"{what} exceeds the model's max_position_embeddings={positions}; use "
              f"seq_len<={positions - decode_tokens} (or raise model.config.max_position_embeddings for random weights)")


def check_int_ranges(cfg: RunnerConfig) -> None:
    """Every integer key must fit its results column (seed: int64, the others int32): a bigger value would fail only
    when the results are written (or inside torch), after the work."""
    def walk(obj: Any, prefix: str):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            elif isinstance(value, int) and not isinstance(value, (bool, Enum)):
                yield f"{prefix}{f.name}", value

    for key, value in walk(cfg, ""):
        bound = INT64_MAX if key == "seed" else INT32_MAX
        if not -bound - 1 <= value <= bound:
            _fail(key, f"{value} is out of range; use an integer between {-bound - 1} and {bound}")


def check_selector(selector: SelectorConfig, experts: Optional[int]) -> None:
    name, params = selector.name, dict(selector.params)
    if name == "topk":  # the name of the model's own routing before it was `router`
        _fail("selector.name", "selector 'topk' is now called 'router' (the model's own routing); use "
              "selector=router, and topk=K for its k")
    if name not in APP_SELECTORS:
        _fail("selector.name", f"unknown selector {name!r}; valid selectors: {', '.join(APP_SELECTORS)}")
    if name == OWN_ROUTING:
        if params:
            _fail(f"selector.{next(iter(params))}", "selector 'router' is the model's own routing and takes no "
                  "parameters; set topk=K")
        return
    for key, value in params.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            _fail(f"selector.{key}", f"must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            _fail(f"selector.{key}", f"must be finite, got {value!r}")
    if experts is not None:  # the full check again, with the model's real expert count, when the model is loaded
        from .profiler.selectors import SelectorError, validate_params

        try:
            validate_params(name, {k: v for k, v in params.items() if v is not None}, experts)
        except SelectorError as exc:
            _fail(f"selector={name}", str(exc))


def validate(cfg: DictConfig) -> RunnerConfig:
    """Composed config -> RunnerConfig, failing with ConfigError (one line, naming the key) on any problem."""
    from omegaconf.errors import OmegaConfBaseException

    unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=False))  # a '+key=' or an experiment file's key too
    if unknown:
        raise ConfigError("; ".join(unknown))
    try:
        plain = OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"}) if "hydra" in cfg else cfg
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunnerConfig), plain))
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(config_message(exc)) from None
    assert isinstance(obj, RunnerConfig)
    return obj


def unknown_keys(data: dict, cls: type = None, prefix: str = "") -> list[str]:
    """One message per key of `data` (a nested dict, e.g. the composed config) that the schema does not have, naming
    the closest valid key. Free-form dicts such as model.config take any key."""
    import difflib
    import typing

    cls = cls or RunnerConfig
    hints = typing.get_type_hints(cls)
    errors = []
    for key, value in data.items():
        if cls is RunnerConfig and key in ("hydra", *OTHER_GROUPS):
            continue
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(hints)}"
            errors.append(f"{prefix}{key}: unknown key ({hint}); python -m runner --help lists every key")
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            errors += unknown_keys(value, hints[key], f"{prefix}{key}.")
    return errors


def check_command_line(argv: list[str]) -> Optional[str]:
    """The first override on a `python -m runner` command line whose key the schema lacks (`topK=4`, `+topK=4`,
    `model.hiden_size=1`), as an error message; None when all are known. Hydra's own syntax errors are left to it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .hydra_internals import args_parser

    args, _ = args_parser().parse_known_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra reports it with its own message
        return None
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or "/" in key or override.package is not None:
            continue
        nested: dict = {}
        for part in reversed(key.split(".")):
            nested = {part: nested}
        errors = unknown_keys(nested)
        if errors:
            return errors[0]
    return None


def config_message(exc: BaseException) -> str:
    """An OmegaConf/Hydra error on one line: their messages carry 'full_key: ...' detail lines; keep the message (its
    first line) and the key."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
    head = lines[0]
    return f"{key}: {head}" if key and key not in head else head


# groups that are not fields of RunnerConfig, and Hydra's own launchers (the presets are conf/hydra/launcher/*.yaml)
OTHER_GROUPS = {"experiment": "a sweep declared in conf/experiment/<name>.yaml (run it with -m)"}
HYDRA_LAUNCHERS = {
    "basic": "Hydra's default: the jobs one after another in this process, reusing the loaded model",
    "joblib": "parallel worker processes on this machine (hydra.launcher.n_jobs=N)",
    "submitit_local": "one process per job on this machine; a crashed job is recorded, the sweep goes on",
    "submitit_slurm": "SLURM jobs through submitit",
}


def help_text() -> str:
    """The text of `python -m runner --help`: what every group and key means (the `doc` help of the dataclasses),
    the options of each group (Hydra's $APP_CONFIG_GROUPS) and the launchers."""
    import typing

    def entries(cls: type, prefix: str) -> list[tuple[str, str]]:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        out = [(prefix + f.name, f.metadata.get("help", "")) for f in fields]
        nested = [f.name for f in fields if dataclasses.is_dataclass(hints[f.name])]  # dims.override, dims.fallback
        if nested:  # fields of one type (DimValues) share their keys: dims.{override,fallback}.<dim>
            names = nested[0] if len(nested) == 1 else "{" + ",".join(nested) + "}"
            out += entries(hints[nested[0]], f"{prefix}{names}.")
        return out

    hints = typing.get_type_hints(RunnerConfig)
    groups = [f for f in dataclasses.fields(RunnerConfig) if dataclasses.is_dataclass(hints[f.name])]
    sections = {f.name: entries(hints[f.name], f"{f.name}.") for f in groups}
    width = max(len(key) for keys in sections.values() for key, _ in keys) + 2
    lines = ["python -m runner profiles a Hugging Face MoE model on a text slice (routing, exact FLOPs, loss, speed) and "
             "writes tidy parquet.",
             "",
             "  python -m runner [group=option ...] [key=value ...]   one job",
             "  python -m runner -m [key=a,b ...] [group=x,y ...]       a sweep: one job per combination",
             "  python -m runner ... --cfg job --resolve                show the composed config, run nothing",
             "",
             "== Groups (group=option; then group.key=value) =="]
    lines += [f"  {f.name:<{width}}{f.metadata['help']}" for f in groups]
    lines += [f"  {name:<{width}}{text}" for name, text in OTHER_GROUPS.items()]
    lines += ["", "== Options of each group ==", "$APP_CONFIG_GROUPS", "", "== Keys (key=value) =="]
    for f in dataclasses.fields(RunnerConfig):
        if f not in groups:
            lines.append(f"  {f.name:<{width}}{f.metadata['help']}")
    for name, keys in sections.items():
        lines += ["", f"== {name}.* =="] + [f"  {key:<{width}}{text}" for key, text in keys]
    lines += ["", "== Launchers (-m hydra/launcher=NAME) =="]
    lines += [f"  {name:<{width}}{text}" for name, text in {**HYDRA_LAUNCHERS, **launcher_presets()}.items()]
    lines += ["", "More: docs/runner.md; --hydra-help for Hydra's own flags."]
    return "\n".join(lines).replace("$", "$$").replace("$$APP_CONFIG_GROUPS", "$APP_CONFIG_GROUPS") + "\n"


def launcher_presets() -> dict[str, str]:
    """This project's launcher presets: name -> the first comment line of conf/hydra/launcher/<name>.yaml that is
    neither the package line nor a command line."""
    presets = {}
    for path in sorted((CONFIG_DIR / "hydra" / "launcher").glob("*.yaml")):
        comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
        text = next((c for c in comments if not c.startswith(("@package", "python -m"))), "")
        presets[path.stem] = f"preset: {text}"
    return presets


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="runner_schema", node=RunnerConfig)
    store.store(group="hydra/help", name="runner_help",
                node={"app_name": "runner", "header": "", "footer": "", "template": help_text()})
