"""The checks of a composed config, all before anything is loaded: types and unknown keys (with did-you-mean),
ranges, cross-field rules, selector parameters and the command line itself. Each failure is one line naming the key
and how to fix it (a ConfigError)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import sys
from enum import Enum
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from handlers.base import EXPERT_COUNT_FIELDS

from ..errors import ConfigError, config_message
from ..profiler.selector_registry import OWN_ROUTING
from .eval_checks import check_eval
from .help import OTHER_GROUPS
from .schema import (APP_SELECTORS, BYTE_VOCAB_SIZE, CAPACITY_FACTORS, COMPILE_MODES, DEVICE_MAPS, DTYPES, INT32_MAX,
                     INT64_MAX, MEMORY_SIZE, MODEL_NAME_MAX, ON_ERROR, QUALITY, SLICE, SLUG, TOPK_FIELDS, DatasetKind,
                     DeviceConfig, DimsConfig, ModelConfig, RunnerConfig, SelectorConfig, Weights)
from ..trained import SPLITS as PYDOC_SPLITS


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"{key}: {message}")


def _check_device_map(device: DeviceConfig) -> None:
    if device.device_map is not None and device.device_map not in DEVICE_MAPS:
        _fail("device.device_map", f"{device.device_map!r} is not one of {', '.join(DEVICE_MAPS)} (or null)")
    for key in ("max_memory", "offload_folder"):
        if getattr(device, key) is not None and device.device_map is None:
            _fail(f"device.{key}", "takes effect only with device.device_map; use device=auto or drop it")
    if device.offload_folder is not None:
        from ..files import creatable

        why = creatable(device.offload_folder)
        if why:
            _fail("device.offload_folder", f"cannot create the directory {device.offload_folder} ({why}); use a "
                  "directory path")
    if device.max_memory is not None and not isinstance(device.max_memory, dict):
        _fail("device.max_memory", f"must be a mapping such as '{{0: 70GiB, cpu: 200GiB}}', got {device.max_memory!r}")
    for where, size in (device.max_memory or {}).items():
        if not re.match(r"^(\d+|cpu|disk|cuda:\d+)$", str(where)):
            _fail("device.max_memory", f"key {where!r} is not a GPU index (0, 1, ...), cpu or disk")
        if not MEMORY_SIZE.match(str(size)):
            _fail("device.max_memory", f"{where}: {size!r} is not a size such as 70GiB, 500MB or a byte count")


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
    if len(m.name) > MODEL_NAME_MAX:
        _fail("model.name", f"{m.name!r} is {len(m.name)} characters; use at most {MODEL_NAME_MAX} (it names the "
              "results partition of the model)")
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
    for key in ("peak_tflops", "peak_bandwidth_gbs"):
        if getattr(cfg.device, key) is not None and not getattr(cfg.device, key) > 0:
            _fail(f"device.{key}", f"must be a positive number or null, got {getattr(cfg.device, key)}")
    if not re.match(r"^(cpu|cuda|meta)(:\d+)?$", cfg.device.device):
        _fail("device.device", f"{cfg.device.device!r} is not a torch device such as cpu, cuda or cuda:1")
    _check_device_map(cfg.device)
    if d.kind is DatasetKind.hf and not d.path:
        _fail("dataset.path", "dataset=hf needs a path: a hub id (with dataset.config_name if it has several), a "
              "builder on local files (dataset.path=json dataset.data_files=FILE) or a save_to_disk directory; "
              "or use dataset=wikitext2")
    if d.kind is DatasetKind.local and not d.path:
        _fail("dataset.path", "dataset=local needs a path: a file or a glob")
    if d.kind is DatasetKind.pydoc and d.split not in PYDOC_SPLITS:
        _fail("dataset.split", f"{d.split!r} is not a split of the pydoc text; use one of {', '.join(PYDOC_SPLITS)}")
    if d.slice is not None and not SLICE.match(d.slice):
        _fail("dataset.slice", f"{d.slice!r} is not a slice such as '[:64]', '[10:20]' or '[:10%]'")
    if d.format not in ("auto", "text", "jsonl", "json", "parquet"):
        _fail("dataset.format", f"{d.format!r} is not one of auto, text, jsonl, json, parquet")
    if d.name is not None and not SLUG.match(d.name):
        _fail("dataset.name", f"{d.name!r} must be a path-safe slug")
    check_selector(cfg.selector, experts)
    _check_ablation(cfg)
    check_eval(cfg.eval, m.weights)
    check_analysis(cfg)


def check_analysis(cfg: RunnerConfig) -> None:
    a, trace = cfg.analysis, cfg.trace
    unknown = [f for f in a.capacity_factors if f not in CAPACITY_FACTORS]
    if unknown:
        _fail("analysis.capacity_factors", f"{unknown[0]} has no drop-rate column; use any of "
              f"{', '.join(map(str, CAPACITY_FACTORS))} (or [] for none)")
    for key, values, low in (("ep_sizes", a.ep_sizes, 1), ("redundant_experts", a.redundant_experts, 0)):
        for value in values or ():
            if value < low:
                _fail(f"analysis.{key}", f"must be integers >= {low}, got {value}")
    check_placement(cfg, expert_count(cfg.model, cfg.dims))
    if a.placement_from is not None and not a.placement:
        _fail("analysis.placement_from", "scores placements, so it needs analysis.placement=true (or analysis=full)")
    if a.min_token_count < 1:
        _fail("analysis.min_token_count", f"must be >= 1, got {a.min_token_count}")
    if trace.max_tokens < 1:
        _fail("trace.max_tokens", f"must be >= 1, got {trace.max_tokens}")
    if a.cache and not trace.enabled:
        _fail("analysis.cache", "replays the routing trace, so it needs trace=true")
    if trace.logits and not trace.enabled:
        _fail("trace.logits", "adds to the trace, so it needs trace=true")


def check_placement(cfg: RunnerConfig, experts: Optional[int]) -> None:
    """Explicit EP sizes must divide the expert count (a placement splits the experts evenly over the ranks) and the
    redundant replicas are at most one per expert: what would be dropped or run for hours fails here instead."""
    a = cfg.analysis
    if not a.placement or experts is None:
        return
    for size in a.ep_sizes or ():
        if experts % size:
            divisors = [n for n in range(2, experts + 1) if experts % n == 0][:8]
            _fail("analysis.ep_sizes", f"{size} does not divide the {experts} experts of model {cfg.model.name!r}; "
                  f"use divisors such as {', '.join(map(str, divisors))} (or null for those of 2..64)")
    for replicas in a.redundant_experts or ():
        if replicas > experts:
            _fail("analysis.redundant_experts", f"{replicas} exceeds the {experts} experts of model "
                  f"{cfg.model.name!r}; use at most one replica per expert ({experts})")


def check_loaded(conf: RunnerConfig, model, profiler) -> None:
    """What only the loaded model can tell: its own top-k against its experts, its position table against seq_len;
    and a dimension given by hand (or in the config) that contradicts the weights, as one warning line."""
    for layer in profiler.layers:
        k, experts = layer.dims["top_k"].value, layer.dims["num_experts"].value
        if k > experts:
            raise ConfigError(f"{layer.dims['top_k'].detail}: top-k {k} exceeds the {experts} experts of layer "
                              f"{layer.layer_id}; use a value <= {experts} (or topk=K to change the live top-k)")
    if profiler.layers:  # the expert count a checkpoint brings (the config may not have said)
        check_placement(conf, profiler.layers[0].dims["num_experts"].value)
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    positions = getattr(text, "max_position_embeddings", None)
    if conf.model.weights is not Weights.meta and isinstance(positions, int) and not isinstance(positions, bool):
        check_positions(conf.seq_len, conf.decode_tokens, positions)
    seen: dict[str, list[int]] = {}
    for layer in profiler.layers:
        for message in layer.warnings:
            seen.setdefault(message, []).append(layer.layer_id)
    for message, ids in seen.items():
        span = f"layer {ids[0]}" if len(ids) == 1 else (
            f"layers {ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else f"layers {', '.join(map(str, ids))}")
        line = (f"runner: warning: MoE {span}: {message}; the results use the resolved value (layers rows carry it "
                "in dims_warning)")
        print(line, file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            logging.getLogger("runner.printed").warning("%s", line)  # the job's runner.log (conf/config.yaml)


def check_finite(loss: Any, layers) -> None:
    """NumericsError when the router scores of any MoE layer or the loss were not finite (profiler.frames.
    nonfinite_layers): the routing numbers would look like real imbalance."""
    from ..errors import NumericsError
    from ..profiler.frames import NONFINITE, nonfinite_layers

    problems = []
    ids = nonfinite_layers(layers) if layers is not None else []
    if ids:
        problems.append(f"{NONFINITE} in MoE layer(s) {', '.join(map(str, ids[:8]))}" + (" ..." if len(ids) > 8 else ""))
    if loss is not None and not math.isfinite(float(loss)):
        problems.append(f"loss {loss}")
    if problems:
        raise NumericsError(f"{' and '.join(problems)}: the model's numbers are undefined (a config that breaks it, "
                            "e.g. model.config.rms_norm_eps <= 0, or an overflowing device.dtype); the routing numbers "
                            "would be meaningless, so none were stored")


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


def _check_ablation(cfg) -> None:
    """analysis.ablation: the model's own routing only; at least one batch."""
    if cfg.analysis.ablation and cfg.selector.name != OWN_ROUTING:
        _fail("analysis.ablation", f"expert ablation runs the model's own routing; use selector=router (got "
              f"selector={cfg.selector.name}), with topk=K for another k")
    if cfg.analysis.ablation_batches < 1:
        _fail("analysis.ablation_batches", f"must be at least 1, got {cfg.analysis.ablation_batches}")


def _check_calibration(selector: SelectorConfig) -> None:
    """selector.target_k / selector.calibration_batches (compute-matched selectors, profiler/calibrate.py)."""
    from ..profiler.selector_registry import CALIBRATED, LAYER_BUDGET

    target, held = selector.target_k, selector.calibration_batches
    if held is not None and held < 1:
        _fail("selector.calibration_batches", f"must be at least 1, got {held}; leave it null for no calibration")
    if target is None:
        return
    if not math.isfinite(target) or target <= 0:
        _fail("selector.target_k", f"must be a positive mean k, got {target!r}")
    if selector.name == OWN_ROUTING:
        if target != int(target):
            _fail("selector.target_k", f"selector=router runs a static top-k: target_k must be a whole k, got "
                  f"{target}; calibrate cumsum, min_p, gap_ratio, random_k or layer_k to a fractional mean k")
    elif selector.name not in (*CALIBRATED, LAYER_BUDGET):
        _fail("selector.target_k", f"selector {selector.name!r} has no parameter to calibrate; target_k works with "
              f"{', '.join(sorted((*CALIBRATED, LAYER_BUDGET)))} (and router, as the static top-k)")


def check_selector(selector: SelectorConfig, experts: Optional[int]) -> None:
    name, params = selector.name, dict(selector.params)
    if name == "topk":  # the name of the model's own routing before it was `router`
        _fail("selector.name", "selector 'topk' is now called 'router' (the model's own routing); use "
              "selector=router, and topk=K for its k")
    if name not in APP_SELECTORS:
        _fail("selector.name", f"unknown selector {name!r}; valid selectors: {', '.join(APP_SELECTORS)}")
    _check_calibration(selector)
    if name == OWN_ROUTING:
        if params:
            _fail(f"selector.{next(iter(params))}", "selector 'router' is the model's own routing and takes no "
                  "parameters; set topk=K")
        return
    for key, value in params.items():
        if key == "ks":  # a list of k per layer: checked by the selectors' own validation
            continue
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            _fail(f"selector.{key}", f"must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            _fail(f"selector.{key}", f"must be finite, got {value!r}")
    if experts is not None:  # the full check again, with the model's real expert count, when the model is loaded
        from ..profiler.selectors import SelectorError, validate_params

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
    check(obj)
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
