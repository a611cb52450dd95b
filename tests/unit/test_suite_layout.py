"""The suite's own layout. Test files live in tests/unit (the library, no Hydra), tests/integration (Hydra configs
composed and jobs run in-process) or tests/e2e (CLI subprocesses); their names are unique (pytest imports them by
file name); no test module imports another: shared code is tests/helpers and the fixtures of tests/conftest.py. A skip
or xfail names its condition: none catches every exception."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from helpers import TESTS

KINDS = ("unit", "integration", "e2e")
TEST_FILES = sorted(TESTS.rglob("test_*.py"))
PYTHON_FILES = sorted(p for p in TESTS.rglob("*.py") if "data" not in p.relative_to(TESTS).parts)


def imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import statement, at any depth; relative imports keep their dots."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((node.lineno, module))
            if not node.module:  # `from . import test_x`
                found += [(node.lineno, "." * node.level + alias.name) for alias in node.names]
    return found


def imports_of_test_modules(source: str) -> list[str]:
    """The imports of `source` that name a test module (`test_*` anywhere in the dotted path) or a conftest."""
    return [f"line {line}: {module}" for line, module in imports(source)
            if any(part.startswith("test_") or part == "conftest" for part in module.strip(".").split("."))]


@pytest.mark.parametrize("source, flagged", [
    ("from test_job import run_job", True),
    ("import test_errors", True),
    ("def f():\n    from test_sweeps import sweep", True),  # imports inside functions count too
    ("from tests.integration.test_job import run_job", True),
    ("from . import test_job", True),
    ("import conftest", True),
    ("from helpers.jobs import run_job", False),
    ("from runner import job", False),
    ("import pytest", False),
])
def test_the_scan_finds_imports_of_test_modules(source, flagged):
    assert bool(imports_of_test_modules(source)) is flagged


def test_no_test_module_imports_another():
    offenders = {str(path.relative_to(TESTS)): found for path in PYTHON_FILES
                 if (found := imports_of_test_modules(path.read_text()))}
    assert not offenders, f"import shared code from tests/helpers or use a conftest fixture instead: {offenders}"


def test_test_files_live_in_unit_integration_or_e2e():
    misplaced = [str(p.relative_to(TESTS)) for p in TEST_FILES
                 if p.parent.parent != TESTS or p.parent.name not in KINDS]
    assert not misplaced
    assert all(any(p.parent.name == kind for p in TEST_FILES) for kind in KINDS)


def test_test_files_are_named_by_subject():
    # what a file tests, not the issue, round or reader it came from (test_newcomer.py said nothing of its contents)
    named_after = [p.name for p in TEST_FILES if any(word in p.stem for word in ("issue", "newcomer", "robustness",
                                                                                   "round", "persona", "review"))]
    assert not named_after


def test_test_file_names_are_unique():
    # the folders are not packages: pytest imports each test file by its name, so two test_x.py would collide
    counts = Counter(p.name for p in TEST_FILES)
    assert not [name for name, n in counts.items() if n > 1]
    assert not [p for kind in KINDS if (p := TESTS / kind / "__init__.py").exists()]


def _names(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported, attribute paths such as `sys.executable` used) in one file."""
    tree = ast.parse(path.read_text())
    modules = {module.strip(".") for _, module in imports(path.read_text())}
    attributes = {f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)}
    return modules, attributes


@pytest.mark.parametrize("path", [p for p in TEST_FILES if p.parent.name != "e2e"], ids=lambda p: p.name)
def test_only_e2e_tests_start_processes(path):
    modules, attributes = _names(path)
    assert not {"subprocess", "multiprocessing"} & modules and "sys.executable" not in attributes, (
        f"{path.relative_to(TESTS)} starts processes: it belongs in tests/e2e")


@pytest.mark.parametrize("path", [p for p in TEST_FILES if p.parent.name == "unit"], ids=lambda p: p.name)
def test_unit_tests_compose_no_hydra_config(path):
    modules, _ = _names(path)
    hydra = sorted(m for m in modules if m.split(".")[0] == "hydra" or m in ("helpers.jobs", "helpers.cli",
                                                                             "helpers.config_dirs"))
    assert not hydra, f"{path.relative_to(TESTS)} composes Hydra configs or runs jobs ({hydra}): tests/integration"


def catch_all_skips(source: str) -> list[str]:
    """Skips and xfails that hide unknown failures: pytest.skip / xfail / importorskip in an `except` clause that
    catches everything (bare, Exception, BaseException), and xfail marks without the exception they expect (raises=)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ExceptHandler):
            caught = node.type
            names = {n.id for n in ast.walk(caught) if isinstance(n, ast.Name)} if caught is not None else {"(bare)"}
            if names & {"(bare)", "Exception", "BaseException"}:
                calls = [c.func.attr for c in ast.walk(node) if isinstance(c, ast.Call)
                         and isinstance(c.func, ast.Attribute) and c.func.attr in ("skip", "xfail", "importorskip")]
                clause = ast.unparse(caught) if caught else ""
                found += [f"line {node.lineno}: except {clause}: pytest.{call}" for call in calls]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "xfail"
              and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "mark"
              and "raises" not in {k.arg for k in node.keywords}):
            found.append(f"line {node.lineno}: pytest.mark.xfail without raises=")
    return found


@pytest.mark.parametrize("source, flagged", [
    ("try:\n    f()\nexcept Exception as e:\n    pytest.skip(str(e))", True),
    ("try:\n    f()\nexcept:\n    pytest.xfail('x')", True),
    ("try:\n    f()\nexcept (ValueError, Exception):\n    pytest.skip('x')", True),
    ("@pytest.mark.xfail(reason='flaky')\ndef test_x(): pass", True),
    ("try:\n    f()\nexcept ProfilerError:\n    raise", False),
    ("@pytest.mark.xfail(raises=KeyError, reason='known')\ndef test_x(): pass", False),
    ("if gpu:\n    pytest.skip('a GPU is present')", False),
])
def test_the_scan_finds_catch_all_skips(source, flagged):
    assert bool(catch_all_skips(source)) is flagged


def test_no_skip_or_xfail_hides_an_unknown_failure():
    offenders = {str(path.relative_to(TESTS)): found for path in PYTHON_FILES
                 if (found := catch_all_skips(path.read_text()))}
    assert not offenders, f"skip or xfail on a named condition or a specific exception instead: {offenders}"
