"""A job's compute-matched selector (`selector.target_k`, `selector.calibration_batches`): the leading batches held out
of the evaluation, the selector's parameter calibrated on them (runner/profiler/calibrate.py), and the runs columns
that say what was found, on which blocks. Nothing here touches a tensor."""
from __future__ import annotations

import json

from ..errors import ConfigError
from ..results import RunRecord
from ..profiler.selector_registry import OWN_ROUTING
from ..config.schema import RunnerConfig


def hold_out(conf: RunnerConfig, loaded, profiler, batches: list, row: RunRecord) -> list:
    """The batches to evaluate: after the `selector.held_out_batches` leading ones (calibrated on, when the selector
    has a target_k), at most `max_batches` of them."""
    held = conf.selector.held_out_batches
    calibration, batches = batches[:held], batches[held:]
    if conf.max_batches is not None:
        batches = batches[: conf.max_batches]
    if held:
        if not batches:
            raise ConfigError(f"selector.calibration_batches={held} leaves no batch to evaluate ({len(calibration)} "
                              "batches in all); use a larger dataset slice or fewer calibration batches")
        _calibrate(conf, loaded, profiler, calibration, row)
    return batches


def _calibrate(conf: RunnerConfig, loaded, profiler, calibration: list, row: RunRecord) -> None:
    """selector.target_k: the selector's parameter bisected on the calibration batches (profiler/calibrate.py); the
    runs columns say what was found, on which blocks."""
    from ..profiler.calibrate import calibrate, calibrate_layer_k
    from ..profiler.selector_registry import LAYER_BUDGET

    blocks = sum(int(b.shape[0]) for b in calibration)
    row.update(calibration_batches=len(calibration), target_k=conf.selector.target_k,
               calibration_slice=f"blocks 0-{blocks - 1} of {row.dataset_source} (batches 0-{len(calibration) - 1})")
    if conf.selector.target_k is None or conf.selector.name == OWN_ROUTING:
        return  # the same batches held out, so that this job evaluates what the calibrated ones do
    if conf.selector.name == LAYER_BUDGET:  # a k per layer, the budget split by sensitivity
        found = calibrate_layer_k(loaded.model, profiler, calibration, int(profiler.selector_params["k_max"]),
                                  conf.selector.target_k)
    else:
        found = calibrate(loaded.model, profiler, calibration, conf.selector.name, profiler.selector_params,
                          conf.selector.target_k)
    row.update(calibrated_param=found.param, calibrated_value=found.value, calibration_k_mean=found.k_mean,
               selector_params=json.dumps(profiler.selector_params, sort_keys=True, default=str))
