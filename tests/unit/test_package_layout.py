"""The package's layout, from the source: the app's rooms import only downwards (cli -> job -> config/results ->
profiler -> handlers), no import cycle, one module per basename, and the README's layout table and docs/index.md's
"where each concept is defined" table name every module. Imports inside functions count; `if TYPE_CHECKING:` ones
do not (they never run)."""
from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

from helpers import ROOT

# top to bottom: a module imports its own room and the rooms below it, never one above. The commands (python -m
# runner / runner.compare / runner.cache / runner.baseline / runner.trained.train and the report's) sit on top; errors.py,
# files.py (atomic writes, user directories: stdlib and errors.py only), runner/trained/__init__.py (where the shipped
# checkpoints and their text are: stdlib only), runner/__init__.py and handlers/ are the floor everything may stand on.
ROOMS = ("commands", "cli", "baseline", "job", "slurm", "report", "results", "config", "profiler", "floor")
SOURCES = ("runner", "handlers", "hydra_plugins")


def room_of(module: str) -> str:
    parts = module.split(".")
    if module in ("runner.__main__", "runner.compare", "runner.compare.__main__", "runner.cache",
                  "runner.cache.__main__", "runner.report.__main__", "runner.baseline.__main__", "runner.trained.train"):
        return "commands"
    if parts[0] == "hydra_plugins":
        return "slurm"  # the SLURM launcher (Hydra finds launchers only in the hydra_plugins package)
    if module == "runner":
        return "profiler"  # the package re-exports the library's facade (MOEProfiler), lazily
    if parts[0] == "handlers" or module in ("runner.errors", "runner.files", "runner.trained"):
        return "floor"
    return parts[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for top in SOURCES for p in sorted((ROOT / top).rglob("*.py"))}


def runtime_imports(module: str) -> set[str]:
    """The modules of this project `module` imports when it runs (at the top or inside a function): for `from pkg
    import name` the submodule pkg.name when there is one, else pkg."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for stmt in node.body for n in ast.walk(stmt)}
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {module: runtime_imports(module) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_scan_finds_a_cycle_and_reads_function_level_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert "runner.config.help" in GRAPH["runner.config.checks"]
    assert "runner.job.pipeline" in GRAPH["runner.cli.entry"]  # imported inside main()


def test_no_import_cycle():
    assert not cycles(GRAPH), "modules that import each other (directly or around a loop): " + str(cycles(GRAPH))


def test_every_module_is_in_a_known_room():
    assert not {m: room_of(m) for m in MODULES if room_of(m) not in ROOMS}


def test_no_module_imports_a_room_above_it():
    upward = [f"{m} ({room_of(m)}) imports {t} ({room_of(t)})" for m, targets in GRAPH.items() for t in sorted(targets)
              if ROOMS.index(room_of(t)) < ROOMS.index(room_of(m))]
    assert not upward, f"rooms import downwards only ({' > '.join(ROOMS)}): {upward}"


def test_the_launcher_and_the_results_never_import_the_job():
    for module, targets in GRAPH.items():
        if room_of(module) in ("slurm", "results"):
            assert not [t for t in targets if room_of(t) == "job"], module


def test_the_library_imports_only_itself_and_handlers():
    for module, targets in GRAPH.items():
        if room_of(module) == "profiler":
            assert {t.split(".")[0] for t in targets} <= {"runner", "handlers"}
            assert not [t for t in targets if t.startswith("runner.") and room_of(t) not in ("profiler", "floor")], module


def test_module_basenames_are_unique():
    names = Counter(p.stem for p in MODULES.values() if p.stem not in ("__init__", "__main__"))
    assert not [name for name, n in names.items() if n > 1], "two modules share a name: rename one by what it does"


def layout_rows(text: str, heading: str) -> list[str]:
    """The table rows of the section under `heading` (up to the next heading)."""
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def named_in(rows: list[str], path: Path) -> bool:
    """A row names the module by its path (`runner/job/data.py`), or by its file name in a row that names its folder."""
    rel = path.relative_to(ROOT).as_posix()
    folder = rel.rsplit("/", 1)[0] + "/"
    return any(f"`{rel}`" in row or (f"`{path.name}`" in row and f"`{folder}" in row) for row in rows)


DOCUMENTED = [p for top in ("runner", "handlers") for p in sorted((ROOT / top).rglob("*.py"))
              if p.name != "__init__.py" and not (p.name == "__main__.py" and p.parent.name != "runner")]


@pytest.mark.parametrize("page, heading", [("README.md", "## Layout"),
                                           ("docs/index.md", "## Where each concept is defined")])
def test_the_layout_tables_name_every_module(page, heading):
    rows = layout_rows((ROOT / page).read_text(), heading)
    missing = [p.relative_to(ROOT).as_posix() for p in DOCUMENTED if not named_in(rows, p)]
    assert not missing, f"{page} ({heading}) does not name: {missing}"
    gone = [name for row in rows for name in re.findall(r"`((?:runner|handlers)/[\w/]+\.py)`", row)
            if not (ROOT / name).exists()]
    assert not gone, f"{page} names modules that do not exist: {gone}"
