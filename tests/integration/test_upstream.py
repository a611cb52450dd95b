"""The private upstream internals the project relies on still exist and behave as relied on.

torch and transformers internals are used from runner/profiler/upstream.py only, Hydra's and OmegaConf's from
runner/cli/hydra_internals.py only. When an upgrade moves one, the test of it fails with a message naming the upstream
symbol and what the project needs from it: fix the adapter, nothing else.

The grouped experts forward (runner/profiler/experts.py) is compared with transformers' own `grouped_mm` here on one
experts module; tests/test_dynamic_k.py::test_fast_skip_experts_equal_transformers_expert_parallel_path does it
end to end through the profiler on four architectures.
"""
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch
from torch import nn

from runner.profiler import experts as profiler_experts
from runner.profiler import upstream
from runner.profiler.cost_formulas import count_flops
from runner.profiler.scan import scan_model
from helpers.tiny_configs import build_tiny_model

from helpers import ROOT  # noqa: E402


pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # tests/conftest.py


# -- the isolation itself -----------------------------------------------------------------------------------------

PRIVATE = re.compile(r"torch\._|_dynamo|_get_raw|mod_tracker|_grouped_linear|ALL_EXPERTS_FUNCTIONS|_orig_mod|"
                     r"_experts_implementation|_is_expert_parallel|hydra\._internal|\._get_node\(|\._value\(\)|"
                     r"_hf_hook|_no_split_modules|_skip_keys_device_placement")


def _code_lines(path: Path) -> dict[int, str]:
    """Line number -> the code on it, comments and string literals left out."""
    lines: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type not in (tokenize.COMMENT, tokenize.STRING):
            lines[token.start[0]] = lines.get(token.start[0], "") + token.string
    return lines


def test_private_upstream_names_appear_only_in_the_adapters():
    """Outside the two adapters, no code names a private upstream symbol (comments and strings aside: the target
    allow-list names the `hydra._internal.` plugin prefix, docstrings name what they wrap)."""
    adapters = {ROOT / "runner/profiler/upstream.py", ROOT / "runner/cli/hydra_internals.py"}
    found = []
    for path in sorted([*(ROOT / "runner").rglob("*.py"), *(ROOT / "handlers").rglob("*.py")]):
        if path in adapters:
            continue
        for number, code in _code_lines(path).items():
            if PRIVATE.search(code):
                found.append(f"{path.relative_to(ROOT)}:{number}: {code}")
    assert not found, "private upstream internals used outside runner/profiler/upstream.py and " \
                      "runner/cli/hydra_internals.py:\n" + "\n".join(found)




# -- accelerate -----------------------------------------------------------------------------------------------------


def test_accelerate_hooks_say_where_a_module_runs_and_transformers_says_how_to_place_a_model():
    accelerate_hooks = pytest.importorskip("accelerate.hooks")
    linear, plain = nn.Linear(2, 2), nn.Linear(2, 2)
    accelerate_hooks.add_hook_to_module(linear, accelerate_hooks.AlignDevicesHook(execution_device="cpu"))
    accelerate_hooks.add_hook_to_module(linear, accelerate_hooks.ModelHook(), append=True)  # now a SequentialHook
    assert type(linear._hf_hook).__name__ == "SequentialHook", "accelerate chains hooks as SequentialHook.hooks"
    assert upstream.execution_device(linear) == torch.device("cpu") and upstream.execution_device(plain) is None
    no_split, skip_keys = upstream.placement_hints(build_tiny_model("olmoe"))
    assert no_split == ["OlmoeDecoderLayer"], "transformers names the unsplittable layer in _no_split_modules"
    assert skip_keys, "transformers names the KV cache keyword in _skip_keys_device_placement"

# -- torch.utils.flop_counter -------------------------------------------------------------------------------------


def test_flop_counter_passes_tensors_to_a_formula_marked_get_raw():
    seen = []

    def formula(a, b, *args, out_val=None, **kwargs):
        seen.append((type(a), type(out_val)))
        return 7

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.mm: upstream.raw_formula(formula)})
    upstream.without_module_tracker(counter)
    with counter:
        torch.randn(2, 3) @ torch.randn(3, 4)
    assert seen and all(arg is torch.Tensor for pair in seen for arg in pair), (
        f"torch.utils.flop_counter.FlopCounterMode no longer calls a custom formula marked `_get_raw = True` with the "
        f"op's tensors (it passed {seen}): runner.profiler.cost_formulas reads varlen attention offsets' values through it "
        f"(upstream.raw_formula)")
    assert counter.get_total_flops() == 7 * len(seen)


def test_flop_counter_enters_its_mod_tracker_attribute_and_reads_its_parents():
    from torch.utils.flop_counter import FlopCounterMode

    assert hasattr(FlopCounterMode(display=False), "mod_tracker"), (
        "torch.utils.flop_counter.FlopCounterMode has no `mod_tracker` attribute any more: upstream."
        "without_module_tracker replaces it to count into 'Global' only (the module tracker raises under no_grad "
        "when a submodule receives a view of a Parameter)")
    entered = []

    class Tracker(upstream._GlobalOnly):
        def __enter__(self):
            entered.append(True)
            return self

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = Tracker()
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad(), counter:
        layer(torch.randn(5, 4))
    assert entered, "FlopCounterMode no longer enters `self.mod_tracker`: upstream.without_module_tracker is moot"
    assert set(counter.get_flop_counts()) == {"Global"} and counter.get_total_flops() == 2 * 5 * 4 * 3, (
        "FlopCounterMode no longer attributes FLOPs to `mod_tracker.parents` ('Global' here): the profiler counts "
        f"into Global only; got {counter.get_flop_counts()}")


def test_count_flops_counts_grouped_mm_through_the_custom_mapping():
    """runner.profiler.cost_formulas registers a formula for aten._grouped_mm (FlopCounterMode has none)."""
    x, w = torch.randn(6, 4), torch.randn(3, 5, 4)
    offs = torch.tensor([2, 4, 5], dtype=torch.int32)
    with count_flops() as counter:
        upstream.grouped_linear(x, w, offs)
    assert counter.get_total_flops() == 2 * 5 * 4 * 5  # rows past offs[-1] are not computed


def test_ops_under_unseen_by_dispatch_modes_are_not_counted():
    """The profiler's own reductions inside its hooks (a transitions matmul) stay out of FlopCounterMode's count."""
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    with count_flops() as counter:
        a @ b
        with upstream.unseen_by_dispatch_modes():
            a @ b
    assert counter.get_total_flops() == 2 * 4 * 3 * 2


# -- torch._dynamo / torch.compile --------------------------------------------------------------------------------


def test_dynamo_config_has_skip_nnmodule_hook_guards():
    assert hasattr(torch._dynamo.config, "skip_nnmodule_hook_guards"), (
        "torch._dynamo.config.skip_nnmodule_hook_guards is gone: the profiler turns it off (upstream.guard_hooks) so "
        "that compiled code re-traces when hooks are added or removed instead of running without them")
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=True):
        assert upstream.hook_guards_skipped() is True
        upstream.guard_hooks()
        assert torch._dynamo.config.skip_nnmodule_hook_guards is False and upstream.hook_guards_skipped() is False


class Tiny(nn.Module):  # defined outside torch.nn: dynamo traces the frames of user code
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x) * 2


def test_debug_get_cache_entry_list_lists_compiled_code():
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list  # noqa: F401 - the import is the first check

    model = Tiny()
    assert not upstream.has_compiled_code(model, [model.linear])
    torch.compile(model, backend="eager")(torch.randn(2, 4))
    assert upstream.has_compiled_code(model, [model.linear]), (
        "torch._dynamo.eval_frame._debug_get_cache_entry_list(code) no longer lists the code torch.compile made for "
        "nn.Module's call wrappers or the model's forward: upstream.has_compiled_code cannot tell that a model was "
        "compiled before the profiler attached (its hooks would be silently skipped)")
    upstream.reset_compiled_code()
    assert not upstream.has_compiled_code(model, [model.linear]), "torch._dynamo.reset() no longer drops compiled code"


def test_optimized_module_wraps_the_module_as_orig_mod():
    model = Tiny()
    compiled = torch.compile(model, backend="eager")
    assert isinstance(compiled, upstream.compiled_wrapper_type()), (
        "torch.compile(module) no longer returns torch._dynamo.eval_frame.OptimizedModule")
    assert upstream.unwrap_compiled(compiled) is model, (
        "OptimizedModule._orig_mod is no longer the compiled module: MOEProfiler(torch.compile(model)) profiles it")
    assert upstream.unwrap_compiled(model) is model


def test_mark_static_address_marks_a_buffer():
    buffer = torch.zeros(3)
    upstream.mark_static(buffer)  # torch._dynamo.mark_static_address: the recorder's buffers keep cudagraphs on
    assert getattr(buffer, "_dynamo_static_input_type", None) is not None, (
        "torch._dynamo.mark_static_address no longer tags the tensor (_dynamo_static_input_type): inductor may turn "
        "CUDA graphs off for graphs that update the routing recorder's buffers in place")


def test_set_stance_force_eager_runs_compiled_code_as_python():
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    if torch.__version__ < (2, 6):  # TorchVersion compares as a version
        pytest.skip("torch < 2.6 has no set_stance: upstream.force_eager relies on dynamo skipping frames under "
                    "FlopCounterMode")
    assert hasattr(torch.compiler, "set_stance"), (
        "torch.compiler.set_stance is gone: upstream.force_eager counts the analytic FLOPs of a compiled model eagerly")

    def f(x):
        return x * 2

    compiled = torch.compile(f, backend="eager")
    with upstream.force_eager():
        compiled(torch.ones(2))
    assert not _debug_get_cache_entry_list(f.__code__), (
        "torch.compiler.set_stance('force_eager') compiled the function anyway")
    compiled(torch.ones(2))
    assert _debug_get_cache_entry_list(f.__code__)


# -- transformers -------------------------------------------------------------------------------------------------


def test_grouped_linear_signature_and_layout():
    from transformers.integrations import moe

    assert hasattr(moe, "_grouped_linear"), (
        "transformers.integrations.moe._grouped_linear is gone: runner.profiler.experts' grouped forward calls it "
        "(through upstream.grouped_linear) exactly as transformers' grouped_mm experts do")
    params = list(inspect.signature(moe._grouped_linear).parameters)
    assert params == ["input", "weight", "offs", "bias", "is_transposed"], (
        f"transformers.integrations.moe._grouped_linear(input, weight, offs, bias, is_transposed) is now "
        f"_grouped_linear({', '.join(params)}): runner.profiler.experts passes bias= and is_transposed=")
    x, w = torch.randn(5, 8), torch.randn(2, 16, 8)  # [E, out, in] (grouped_mm wants 16-byte strides)
    offs = torch.tensor([2, 5], dtype=torch.int32)
    reference = torch.cat([x[:2] @ w[0].T, x[2:] @ w[1].T])
    torch.testing.assert_close(upstream.grouped_linear(x, w, offs), reference, msg=lambda m: (
        f"_grouped_linear(input, weight [E, out, in], offs) no longer computes input @ weight[e].T per group: {m}"))
    torch.testing.assert_close(upstream.grouped_linear(x, w.transpose(-2, -1).contiguous(), offs, is_transposed=True),
                               reference, msg=lambda m: f"_grouped_linear(..., is_transposed=True) changed: {m}")


def test_experts_functions_registry_dispatches_on_the_config_attribute():
    registry = upstream.experts_functions()
    assert registry is not None and "grouped_mm" in registry, (
        "transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS is gone or has no 'grouped_mm': runner.profiler.experts "
        "registers its forward there")
    assert profiler_experts.register() and registry[profiler_experts.NAME] is profiler_experts.grouped_mm_skip_forward
    model = build_tiny_model("olmoe", experts_implementation="grouped_mm")
    experts = scan_model(model)[0].experts
    assert upstream.experts_implementation(experts.config) == "grouped_mm", (
        f"transformers keeps the experts implementation in config.{upstream.EXPERTS_IMPLEMENTATION} no more: the "
        "profiler reads it and sets it to switch the experts to its forward")
    assert getattr(experts, upstream.EXPERT_PARALLEL, None) is False, (
        f"transformers' experts modules have no `{upstream.EXPERT_PARALLEL}` flag (False by default) any more: the "
        "profiler sets it so that the stock kernels mask the sentinel index")


def test_grouped_experts_forward_equals_transformers_grouped_mm_with_sentinel_slots():
    """runner.profiler.experts.grouped_mm_skip_forward is transformers' grouped_mm experts forward step for step, with
    one mask after the down projection instead of the expert-parallel masks."""
    profiler_experts.register()
    model = build_tiny_model("olmoe", experts_implementation="grouped_mm")
    experts = scan_model(model)[0].experts
    num_experts, hidden = experts.num_experts, experts.gate_up_proj.shape[-1]
    generator = torch.Generator().manual_seed(0)
    tokens, k = 10, 4
    states = torch.randn(tokens, hidden, generator=generator)
    index = torch.stack([torch.randperm(num_experts, generator=generator)[:k] for _ in range(tokens)])
    weights = torch.rand(tokens, k, generator=generator)
    drop = torch.rand(tokens, k, generator=generator) < 0.4
    drop[:, 0] = False
    index, weights = torch.where(drop, num_experts, index), weights * ~drop  # sentinel slots: index E, weight 0

    outputs = {}
    for name, expert_parallel in (("grouped_mm", True), (profiler_experts.NAME, False)):
        setattr(experts.config, upstream.EXPERTS_IMPLEMENTATION, name)
        setattr(experts, upstream.EXPERT_PARALLEL, expert_parallel)
        with torch.no_grad():
            outputs[name] = experts(states, index, weights)
    setattr(experts.config, upstream.EXPERTS_IMPLEMENTATION, "grouped_mm")
    setattr(experts, upstream.EXPERT_PARALLEL, False)
    torch.testing.assert_close(outputs[profiler_experts.NAME], outputs["grouped_mm"], rtol=0, atol=0, msg=lambda m: (
        "runner.profiler.experts.grouped_mm_skip_forward no longer equals transformers' grouped_mm experts forward "
        "(transformers.integrations.moe.grouped_mm_experts_forward, _is_expert_parallel=True) with sentinel slots: "
        f"copy its new steps into grouped_mm_skip_forward. {m}"))


# -- Hydra (runner/cli/hydra_internals.py) ----------------------------------------------------------------------------


@pytest.fixture
def composer():
    from hydra.core.global_hydra import GlobalHydra

    import runner
    from runner.cli import hydra_internals
    from runner.config.schema import CONFIG_DIR
    from runner.config.help import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    search_path = hydra_internals.app_search_path(str(Path(runner.__file__).parent / "__main__.py"), str(CONFIG_DIR))
    try:
        yield hydra_internals.Composer("runner", search_path), search_path
    finally:
        GlobalHydra.instance().clear()


def test_hydra_get_args_parser_parses_the_flags_preflight_reads():
    from runner.cli.hydra_internals import args_parser

    args, _ = args_parser().parse_known_args(["-m", "topk=1,2", "--config-dir", "extra", "--config-name", "c"])
    for flag in ("experimental_rerun", "help", "hydra_help", "info", "shell_completion", "cfg"):
        assert hasattr(args, flag), (
            f"hydra._internal.utils.get_args_parser() no longer defines `{flag}`: runner/cli/preflight.py reads it to "
            "leave Hydra's own commands alone")
    assert (args.multirun, args.overrides, args.config_dir, args.config_name) == (True, ["topk=1,2"], "extra", "c"), (
        "hydra._internal.utils.get_args_parser() parses @hydra.main's command line differently: the CLI checks the "
        f"overrides and flags before Hydra starts; got {vars(args)}")


def test_hydra_locate_imports_a_dotted_path():
    from runner.errors import ConfigError
    from runner.cli.hydra_internals import locate

    assert locate("runner.errors.ConfigError") is ConfigError, (
        "hydra._internal.utils._locate('runner.errors.ConfigError') no longer returns the class: the preflight "
        "checks every `_target_` with it before anything is instantiated")
    with pytest.raises(Exception):
        locate("runner.no_such_module.Thing")


def test_hydra_search_path_and_composer_compose_as_hydra_main(composer):
    from runner.cli.hydra_internals import group_exists

    composer, search_path = composer
    providers = [entry.provider for entry in search_path.get_path()]
    assert {"main", "schema"} <= set(providers), (
        "hydra._internal.utils.create_automatic_config_search_path no longer yields the 'main' and 'schema' "
        f"providers (got {providers}): the preflight puts --config-dir before the 'schema' one, as Hydra does")
    assert composer.is_multirun("config", []) is False and composer.is_multirun("config", ["hydra.mode=MULTIRUN"]), (
        "hydra._internal.hydra.Hydra.get_mode(config_name, overrides) no longer reports hydra.mode")
    cfg = composer.compose("config", ["topk=2", "hydra.mode=RUN"], multirun=False)
    assert cfg.topk == 2 and "hydra" in cfg, (
        "hydra._internal.hydra.Hydra.compose_config(config_name, overrides, run_mode) no longer composes the "
        "config with its hydra node: the preflight checks it before Hydra runs anything")
    assert hasattr(composer.loader, "load_sweep_config"), "Hydra.config_loader has no load_sweep_config any more"
    assert group_exists(composer.loader, "model") and not group_exists(composer.loader, "topk"), (
        "ConfigLoaderImpl.repository.group_exists(name) no longer tells config groups from keys: the preflight names "
        "a group given a number (model=5)")


def test_hydra_basic_sweeper_split_arguments_lists_the_jobs():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.cli.hydra_internals import sweep_batches

    parsed = OverridesParser.create().parse_overrides(["topk=1,2", "seed=0,1"])
    jobs = [["topk=1", "seed=0"], ["topk=1", "seed=1"], ["topk=2", "seed=0"], ["topk=2", "seed=1"]]
    assert sweep_batches(parsed, None) == [jobs], (
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments(overrides, max_batch_size) no longer "
        "lists the basic sweeper's jobs in job-number order: the sweep summary and the preflight use that plan")
    assert sweep_batches(parsed, 3) == [jobs[:3], jobs[3:]]


def test_omegaconf_node_access_reads_values_without_resolving():
    from omegaconf import DictConfig, OmegaConf

    from runner.cli.hydra_internals import child_node, raw_value

    cfg = OmegaConf.create({"a": {"x": 1}, "b": "${a.missing}", "jobs": [{"y": 1}, 2]})
    assert isinstance(child_node(cfg, "a"), DictConfig) and isinstance(child_node(cfg.jobs, 0), DictConfig), (
        "omegaconf's Container._get_node(key) no longer returns the child node: the preflight walks every key of the "
        "composed config with it, interpolations unresolved")
    assert raw_value(cfg, "b") == "${a.missing}", (
        "omegaconf's Node._value() no longer returns an interpolation as written: the preflight reads `_target_` and "
        "log file values that do not resolve yet")
