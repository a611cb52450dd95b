"""Structured config (dataclasses in Hydra's ConfigStore) for `python -m runner`.

The schema is the first entry of conf/config.yaml's defaults list, so every value composed after it is type-checked
and every unknown key fails at composition time, naming the key. `validate(cfg)` (called by the job before anything is
loaded) converts the composed config into these dataclasses; the checks are in runner/config/checks.py, the generated
`--help` in runner/config/help.py.

No torch or transformers imports here, nor in what this imports (handlers, runner.profiler.selector_registry,
runner.job.tokenizer): composing and validating a config stays fast.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ..profiler.analysis_set import CAPACITY_FACTORS
from ..profiler.selector_registry import CALIBRATION_PARAMS, OWN_ROUTING, SELECTOR_NAMES, param_help

# the app's selectors: the model's own routing, and the library's dynamic-k policies (its static "topk" policy is
# for library use: the router does that itself)
APP_SELECTORS = (OWN_ROUTING, *(name for name in SELECTOR_NAMES if name != "topk"))

# conf/ ships inside the wheel as runner/conf (pyproject force-include); a checkout or editable install has <repo>/conf.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
if not CONFIG_DIR.is_dir():
    CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

# the longest model.name: the results partition directory holds it whole, so two names sharing a prefix never merge
MODEL_NAME_MAX = 100
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SLICE = re.compile(r"^\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\]$")
# config-field spellings of the model's own top-k, checked against the expert count before a model loads
TOPK_FIELDS = ("num_experts_per_tok", "moe_topk", "num_experts_per_token", "moe_k")
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1  # the results columns: seed is int64, the other integer keys int32
DTYPES = ("auto", "float32", "bfloat16", "float16")
ON_ERROR = ("auto", "raise", "record")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
QUALITY = ("auto", "always", "never")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies
# the built-in byte tokenizer (runner/job/tokenizer.py): 256 bytes + <pad> <bos> <eos>; tiny models' vocab_size
BYTE_VOCAB_SIZE = 259
EVAL_OFF, LM_EVAL = "none", "lm_eval"  # the eval group's options
MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)  # 70GiB, 500MB, 1073741824


class Weights(Enum):
    pretrained = "pretrained"  # from_pretrained(hf_id): local cache / directory, or the hub when online
    random = "random"  # full architecture from model.config, seeded random init
    meta = "meta"  # built on the meta device: analytic FLOPs and parameter counts only, no forward pass


class DatasetKind(Enum):
    builtin = "builtin"  # the text shipped in runner/job/corpus.py
    pydoc = "pydoc"  # the stdlib's pydoc_data.topics, split as the shipped trained model was (runner/trained)
    hf = "hf"  # datasets.load_dataset(path, config_name, split=split + slice, data_files=...)
    local = "local"  # local .txt / .jsonl / .json / .parquet files


def doc(help: str, default: Any = MISSING, factory: Any = None) -> Any:
    """A config field with its one line of help, printed by `python -m runner --help` (runner/config/help.py)."""
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

    kind: DatasetKind = doc("builtin (runner/job/corpus.py) | pydoc (the stdlib's Python docs, the trained model's "
                            "text) | hf (datasets.load_dataset) | local (files)",
                            DatasetKind.builtin)
    name: Optional[str] = doc("label in the results; null: derived from what is loaded", None)
    path: Optional[str] = doc("hf: hub id, builder (json, csv, parquet, text) or save_to_disk dir; local: file or glob",
                              None)
    config_name: Optional[str] = doc("hf: the dataset's configuration", None)
    data_files: Optional[Any] = doc("hf: data_files for builders such as json, csv, parquet", None)
    split: str = doc("hf: the split to read; pydoc: heldout (not trained on) | train", "train")
    slice: Optional[str] = doc("documents to keep, Python/datasets syntax: '[:64]', '[10:20]', '[:10%]'", None)
    field: str = doc("text column / JSON key", "text")
    format: str = doc("local: auto (by extension) | text | jsonl | json | parquet", "auto")


@dataclass
class DeviceConfig:
    """where the model runs, in which dtype"""

    name: str = doc("cpu | cuda | auto", "cpu")
    device: str = doc("torch device of the inputs and of models built in memory: cpu, cuda, cuda:1", "cpu")
    device_map: Optional[str] = doc("auto | balanced | balanced_low_0 | sequential: spread the model over the visible "
                                    "GPUs with accelerate (any weights); null: all on `device`", None)
    # a mapping; typed Any because OmegaConf cannot merge a mapping with GPU-index keys over a null Dict node
    max_memory: Any = doc("with device_map: the most each device holds, "
                                               "'{0: 70GiB, 1: 70GiB, cpu: 200GiB}'; what fits no GPU is offloaded "
                                               "to cpu, then disk; null: all free memory", None)
    offload_folder: Optional[str] = doc("with device_map: where modules mapped to disk are kept (needed only "
                                        "when max_memory leaves some for disk)", None)
    dtype: str = doc("auto | float32 | bfloat16 | float16", "float32")
    num_threads: Optional[int] = doc("CPU intra-op threads; null: 1 for models under 100M parameters, else torch's",
                                     None)
    peak_tflops: Optional[float] = doc("the device's peak dense TFLOP/s for S-MFU; null: the table of known GPUs "
                                       "(runner/profiler/cost_hardware.py), none on CPU", None)
    peak_bandwidth_gbs: Optional[float] = doc("the device's peak memory bandwidth in GB/s for S-MBU; null: the table", None)


@dataclass
class SelectorConfig:
    """per-token routing: the model's own top-k, or a dynamic-k selector and its parameters (selector.k_max=8)"""

    # the fields are the selectors' parameters of runner/profiler/selector_registry.py (a test holds them equal)
    name: str = doc(" | ".join(f"{n} (the model's own routing at topk)" if n == OWN_ROUTING else n
                               for n in APP_SELECTORS), OWN_ROUTING)
    k_max: Optional[int] = doc(param_help("k_max"), None)
    k_min: Optional[int] = doc(param_help("k_min"), None)
    k: Optional[int] = doc(param_help("k"), None)
    threshold: Optional[float] = doc(param_help("threshold"), None)
    ratio: Optional[float] = doc(param_help("ratio"), None)
    alpha: Optional[float] = doc(param_help("alpha"), None)
    keep: Optional[float] = doc(param_help("keep"), None)
    seed: Optional[int] = doc(param_help("seed"), None)
    ks: Optional[List[int]] = doc(param_help("ks"), None)
    target_k: Optional[float] = doc(param_help("target_k"), None)
    calibration_batches: Optional[int] = doc(param_help("calibration_batches"), None)

    @property
    def params(self) -> dict[str, Any]:
        """The selector's own parameters (what the profiler's set_selector takes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("name", *CALIBRATION_KEYS) and getattr(self, f.name) is not None}

    @property
    def held_out_batches(self) -> int:
        """Leading batches kept for calibration, out of the evaluation."""
        if self.calibration_batches is not None:
            return self.calibration_batches
        return DEFAULT_CALIBRATION_BATCHES if self.target_k is not None else 0


CALIBRATION_KEYS = tuple(CALIBRATION_PARAMS)  # the app's keys, not the policy's parameters
DEFAULT_CALIBRATION_BATCHES = 2


@dataclass
class AnalysisConfig:
    """routing analyses beyond load balance: analysis=basic | full | none, or one part: analysis.coactivation=true"""

    name: str = doc("the preset this started from: basic | full | none", "basic")
    capacity_factors: List[float] = doc("capacity factors whose drop rate goes into the layers table "
                                        "(drop_rate_cf<cf>; any of 1.0, 1.25, 1.5, 2.0); []: none",
                                        factory=lambda: list(CAPACITY_FACTORS))
    coactivation: bool = doc("per layer, tokens that selected both experts a and b: table=coactivation "
                             "(E x E int64 per layer and phase on the device)", False)
    transitions: bool = doc("per pair of consecutive MoE layers: transition counts (table=transitions) and the mean "
                            "Jaccard similarity (layers.jaccard_next)", False)
    placement: bool = doc("expert-parallel placement simulation of the measured loads: table=placement", False)
    ep_sizes: Optional[List[int]] = doc("EP sizes to simulate; null: those of 2, 4, ..., 64 that divide E", None)
    redundant_experts: Optional[List[int]] = doc("replica counts R for the balanced+r<R> placements; null: R = EP size",
                                                 None)
    placement_from: Optional[str] = doc("fit the balanced placements on another run's loads and score them on this "
                                        "one's: a results dir, sweep dir, sweep id or run id (latest: the newest)",
                                        None)
    vocab_specialization: bool = doc("per layer, the share of each frequent token id routed top-1 to its most "
                                     "frequent expert (layers.vocab_specialization; V x E int32 per layer and phase)",
                                     False)
    min_token_count: int = doc("vocab_specialization: token ids seen fewer times are left out", 5)
    lookahead: bool = doc("per layer, each token's router input sent through the next MoE layer's router: the share "
                          "of that layer's experts it predicts (layers.lookahead_recall; one more router matmul per "
                          "layer and call)", False)
    cache: bool = doc("replay the routing trace (needs trace=true) through LRU, LFU and OPT expert caches of every "
                      "capacity: table=cache, and the adjacent-token overlap: table=locality", False)
    ablation: bool = doc("per MoE layer and expert, the loss and KL with that expert removed from routing: "
                         "table=ablation (L x E extra passes over analysis.ablation_batches; needs selector=router)",
                         False)
    ablation_batches: int = doc("analysis.ablation: the evaluated batches it runs on (the first ones)", 1)


@dataclass
class TraceConfig:
    """per-token routing dump, table=trace (trace=true is short for trace.enabled=true)"""

    enabled: bool = doc("write one row per (MoE layer, token): experts, weights, k, token id, position", False)
    logits: bool = doc("add the full router distribution per token (router_probs, float16)", False)
    max_tokens: int = doc("tokens traced per MoE layer and job, at most (the rest are counted, not written)",
                          1_000_000)


@dataclass
class EvalConfig:
    """task accuracy through lm-evaluation-harness: eval=lm_eval eval.tasks=[arc_easy,piqa] (docs/eval.md)"""

    name: str = doc("none (no task evaluation) | lm_eval (lm_eval.simple_evaluate on the job's model; table=tasks)",
                    "none")
    tasks: List[str] = doc("lm-eval task, group or tag names (local ones from eval.include_path)", factory=list)
    num_fewshot: Optional[int] = doc("few-shot examples per prompt; null: each task's own default", None)
    limit: Optional[float] = doc("examples per task (a fraction of the task when < 1); null: all", None)
    batch_size: int = doc("lm-eval's batch size (requests per forward pass)", 8)
    include_path: Optional[str] = doc("a directory of local task YAMLs (lm-eval's --include_path)", None)


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
    analysis: AnalysisConfig = doc(AnalysisConfig.__doc__, factory=AnalysisConfig)
    trace: TraceConfig = doc(TraceConfig.__doc__, factory=TraceConfig)
    eval: EvalConfig = doc(EvalConfig.__doc__, factory=EvalConfig)
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
    report: bool = doc("at the end of a multirun, write <sweep dir>/report/report.html with plots "
                       "(python -m runner.report)", True)


TRAINED_RESOLVER = "trained"


def register_resolvers() -> None:
    """`${trained:NAME}` in a model yaml: the directory of a checkpoint shipped in the package (runner/trained/NAME),
    wherever the package is installed or checked out."""
    from omegaconf import OmegaConf

    from ..trained import TRAINED_DIR

    if not OmegaConf.has_resolver(TRAINED_RESOLVER):
        OmegaConf.register_new_resolver(TRAINED_RESOLVER, lambda name: str(TRAINED_DIR / name))
