"""A selector is declared once (runner/profiler/selector_registry.py): the library's functions, the schema's
`selector.*` fields, the app's names and conf/selector/*.yaml are held to the declaration."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml

from helpers import ROOT
from runner.config.schema import APP_SELECTORS, SelectorConfig
from runner.profiler import selectors
from runner.profiler.selector_registry import (CALIBRATION_PARAMS, OWN_ROUTING, PROFILER_KEYWORDS, SELECTOR_SPECS,
                                               SHARED_PARAMS, all_params, register_selector)

CONF = {path.stem: yaml.safe_load(path.read_text()) for path in sorted((ROOT / "conf" / "selector").glob("*.yaml"))}


def test_every_declared_selector_has_its_function_and_no_other():
    assert set(selectors.SELECTORS) == set(SELECTOR_SPECS)
    for name, spec in SELECTOR_SPECS.items():
        keywords = [k for k in inspect.signature(selectors.SELECTORS[name]).parameters
                    if k not in ("probs", *PROFILER_KEYWORDS)]  # position= / index= come from the profiler
        assert keywords == [*SHARED_PARAMS, *spec.params]


def test_a_function_that_differs_from_its_declaration_fails_when_registered():
    with pytest.raises(TypeError, match="does not match its declaration"):
        selectors.implements("cumsum")(lambda probs, k_max, k_min=1, threshold=0.5: probs)


def test_a_second_declaration_of_a_name_fails():
    with pytest.raises(ValueError, match="declared twice"):
        register_selector("kneedle", "again")


def test_the_schema_fields_are_the_declared_parameters():
    # the policies' parameters, then the app's calibration keys (selector.target_k, selector.calibration_batches)
    assert [f.name for f in dataclasses.fields(SelectorConfig)] == ["name", *all_params(), *CALIBRATION_PARAMS]
    assert APP_SELECTORS == (OWN_ROUTING, *(n for n in SELECTOR_SPECS if n != "topk"))


def test_each_app_selector_has_its_conf_file_with_declared_keys_and_defaults():
    assert set(CONF) == set(APP_SELECTORS)
    assert CONF[OWN_ROUTING] == {"name": OWN_ROUTING}
    for name in APP_SELECTORS[1:]:
        spec = SELECTOR_SPECS[name]
        declared = {**SHARED_PARAMS, **spec.params}
        conf = {k: v for k, v in CONF[name].items() if k != "name"}
        assert CONF[name]["name"] == name
        assert conf == {k: default for k, (default, _) in declared.items()}, name
