"""One definition per concept, and handler entries that check themselves.

* Handler fields with a fixed set of values are Literals, checked when a Handler is built: a bad entry fails at import
  of its family module, naming the entry, the field and the values it accepts. top_k_attr is parsed once into a
  TopKLocation.
* Names the torch-free runner (runner/config/schema.py) needs are imported from where they are defined, not copied:
  DIMENSIONS and EXPERT_COUNT_FIELDS from handlers/base.py, SELECTOR_NAMES from runner/profiler/selector_registry.py,
  BYTE_VOCAB_SIZE from runner/job/tokenizer.py, the slice syntax from runner.config.schema.SLICE; the one-line message shortener
  is runner.errors.one_line.
"""
import dataclasses
import re
from pathlib import Path

import pytest

import handlers
from handlers import GENERIC, REGISTRY
from handlers.base import DIMENSIONS, EXPERT_COUNT_FIELDS, Handler, TopKLocation
from runner.config import schema, checks as validation
from runner.errors import one_line

from helpers import ROOT  # noqa: E402


# -- Handler fields -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(scoring="softmx"), "scoring='softmx' is not one of 'softmax', 'sigmoid', 'probs'"),
    (dict(router_output="tuple"), "router_output='tuple' is not one of 'triple', 'logits', 'none'"),
    (dict(top_k_attr="router"), "top_k_attr: 'router' is not 'router.<attr>', 'block.<attr>' or 'config.<field>'"),
    (dict(top_k_attr="layer.top_k"), "top_k_attr: 'layer.top_k' is not 'router.<attr>'"),
    (dict(top_k_attr="config.ffn.top_k"), "top_k_attr: 'config.ffn.top_k' is not"),
    (dict(sentinel_breaks=("eagre",)), "sentinel_breaks: 'eagre' is not one of 'eager', 'batched_mm', 'grouped_mm'"),
    (dict(block_attrs="mlp"), "block_attrs='mlp' must be a tuple"),
    (dict(top_k="num_experts_per_tok"), "top_k='num_experts_per_tok' must be a tuple"),
])
def test_a_bad_handler_entry_fails_when_built_naming_the_field(change, message):
    with pytest.raises(ValueError, match=re.escape(f"Handler('my_moe',): {message}")):
        Handler(("my_moe",), **change)




def test_top_k_attr_is_parsed_once_into_a_location():
    assert TopKLocation.parse("config.top_k_experts") == TopKLocation("config", "top_k_experts")
    assert str(TopKLocation("block", "top_k")) == "block.top_k"
    assert Handler(("m",), top_k_attr="block.top_k").top_k_attr == TopKLocation("block", "top_k")
    assert Handler(("m",), top_k_attr=TopKLocation("block", "top_k")).with_(note="x").top_k_attr.owner == "block"
    for handler in [GENERIC, *REGISTRY.handlers.values()]:
        assert isinstance(handler.top_k_attr, TopKLocation), handler.model_types
    assert REGISTRY.get("gemma4_text").top_k_attr == TopKLocation("config", "top_k_experts")
    assert REGISTRY.get("dbrx").top_k_attr == TopKLocation("block", "top_k")
    with pytest.raises(ValueError):
        TopKLocation("layer", "top_k")  # type: ignore[arg-type]


# -- one definition per concept -----------------------------------------------------------------------------------

def test_dimensions_are_defined_once():
    assert handlers.DIMENSIONS is DIMENSIONS
    assert not hasattr(schema, "DIMENSIONS")
    assert tuple(f.name for f in dataclasses.fields(schema.DimValues)) == DIMENSIONS, \
        "dims.override/dims.fallback (runner.config.schema.DimValues) must have one field per handlers.base.DIMENSIONS"


def test_expert_count_fields_are_the_handlers_own():
    assert validation.EXPERT_COUNT_FIELDS is EXPERT_COUNT_FIELDS
    assert GENERIC.num_experts == EXPERT_COUNT_FIELDS
    # every plain spelling an entry reads is one the schema checks topk against before a model loads
    plain = {spec for handler in REGISTRY.handlers.values() for spec in handler.num_experts
             if isinstance(spec, str) and "." not in spec}
    assert plain <= set(EXPERT_COUNT_FIELDS), plain - set(EXPERT_COUNT_FIELDS)


def test_selector_names_are_defined_once():
    from runner.profiler.selector_registry import SELECTOR_NAMES
    from runner.profiler.selectors import SELECTORS

    assert schema.SELECTOR_NAMES is SELECTOR_NAMES
    assert tuple(SELECTORS) == SELECTOR_NAMES
    assert all(fn.__name__ == name for name, fn in SELECTORS.items())
    assert {p.stem for p in (schema.CONFIG_DIR / "selector").glob("*.yaml")} == set(schema.APP_SELECTORS), \
        "every selector has a conf/selector/<name>.yaml and every such file a selector"


def test_byte_vocab_size_and_slice_syntax_are_defined_once():
    from runner.job import data, tokenizer

    assert validation.BYTE_VOCAB_SIZE is tokenizer.BYTE_VOCAB_SIZE
    assert data.SLICE is schema.SLICE
    slice_pattern = re.compile(r"re\.compile\(r?[\"']\^\\\[")  # a regex for '[a:b]' text
    copies = [str(p.relative_to(ROOT)) for p in (ROOT / "runner").rglob("*.py") if slice_pattern.search(p.read_text())]
    assert copies == ["runner/config/schema.py"], copies


def test_one_line():
    assert one_line("a\n  b\tc ") == "a b c"
    assert one_line(ValueError("x" * 400)) == "x" * 400  # not cut unless a limit is given
    assert one_line("abc def", 5) == "abc d"
    assert one_line("x " * 400, None) == ("x " * 400).strip()


ONE_LINE_USERS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "runner").rglob("*.py") if p.name != "errors.py")


@pytest.mark.parametrize("path", ONE_LINE_USERS)
def test_messages_are_shortened_by_one_line_only(path):
    text = (ROOT / path).read_text()
    assert "join(str(" not in text and ".split())" not in text, f"{path}: use runner.errors.one_line"
    assert "def _short(" not in text, f"{path}: use runner.errors.one_line"


# -- torch-free imports -------------------------------------------------------------------------------------------



def test_no_module_is_over_400_lines():
    """A module a newcomer can read in one sitting: split by job, not by accident."""
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
             for folder in ("runner", "handlers", "hydra_plugins") for path in (ROOT / folder).rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 400} == {}
