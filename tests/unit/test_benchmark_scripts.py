"""The benchmark scripts run only when started: at their top level nothing but imports, definitions, constants, the
import-path and environment setup a script needs, and `if __name__ == "__main__":`. What they share is public
(benchmarks/common.py, and the modules a script is split into, e.g. overhead_variants.py): no script imports another's
private names. No file in benchmarks/ is over MAX_LINES lines: a longer script is split by what it does."""
from __future__ import annotations

import ast

import pytest

from helpers import ROOT

SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
SETUP_CALLS = ("sys.path.insert", "os.environ.setdefault", "warnings.filterwarnings")
MAX_LINES = 400


def runs_at_import(source: str) -> list[str]:
    """Top-level statements that do work when the module is imported."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(
                (isinstance(n, ast.Call) and not _is_constructor(n)) or ast.unparse(n) == "sys.argv"
                for n in ast.walk(node)):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'",
                                                                 "str(ROOT) not in sys.path"):
            continue
        if isinstance(node, ast.Expr) and (isinstance(node.value, ast.Constant) or (
                isinstance(node.value, ast.Call) and ast.unparse(node.value.func) in SETUP_CALLS)):
            continue
        found.append(f"line {node.lineno}: {ast.unparse(node)[:60]}")
    return found


def _is_constructor(call: ast.Call) -> bool:
    """dict(...), Path(__file__).resolve().parents[1] and the like: building a constant, not doing work."""
    text = ast.unparse(call.func)
    return text in ("dict", "tuple", "set", "frozenset", "list") or text.startswith(("Path(", "Path"))


@pytest.mark.parametrize("source, flagged", [
    ("import torch\nX = dict(a=1)\ndef main(): pass\nif __name__ == '__main__':\n    main()", False),
    ("import sys\nvariant = sys.argv[1]", True),
    ("model = build()\n", True),
    ("for i in range(3):\n    print(i)", True),
])
def test_the_scan_finds_work_at_import(source, flagged):
    assert bool(runs_at_import(source)) is flagged


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_nothing_runs_at_import(path):
    assert not runs_at_import(path.read_text()), f"{path.name} works at import: put it in main()"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_no_script_imports_private_names_of_another(path):
    private = [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks")
               for alias in node.names if alias.name.startswith("_")]
    private += [ast.unparse(node) for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in {p.stem for p in SCRIPTS} and node.attr.startswith("_")]
    assert not private, f"{path.name} uses private helpers of another script; share them in benchmarks/common.py"


def test_the_benchmark_scripts_are_found():
    assert {"overhead.py", "overhead_variants.py", "common.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_no_file_is_over_the_line_bound(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES}): split it by what it does"
