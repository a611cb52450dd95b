"""Import boundaries and handler errors seen from a fresh interpreter: a bad handler entry fails at import with one
clear message; the schema, the handlers and `--help` import no torch; the library imports no Hydra."""
from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_the_library_imports_no_hydra():
    """runner.profiler must work without Hydra: importing it (and using it) loads no hydra module."""
    code = ("import sys; import runner.profiler; from runner.profiler import MOEProfiler; "
            "print(sorted(m for m in sys.modules if m == 'hydra' or m.startswith('hydra.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing runner.profiler imported Hydra modules: {out.strip()}"


def test_a_bad_entry_in_a_family_module_fails_at_import(tmp_path):
    (tmp_path / "bad_family.py").write_text("from handlers.base import Handler\n"
                                            "ENTRIES = [Handler(('my_moe',), scoring='sigmiod')]\n")
    result = subprocess.run([sys.executable, "-c", "import bad_family"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": ""})
    assert result.returncode != 0
    assert "ValueError: Handler('my_moe',): scoring='sigmiod' is not one of 'softmax', 'sigmoid', 'probs'" \
        in result.stderr


def test_schema_handlers_and_the_cli_help_import_no_torch():
    code = ("import sys, handlers, runner.config.schema, runner.config.checks, runner.config.identity, "
            "runner.config.help, runner.errors, runner.profiler.selector_registry, runner.profiler.phases; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "the config room or handlers imported torch: `python -m runner --help` gets slow"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "--help"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    imported = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [line for line in imported if "torch" in line], "python -m runner --help imported torch"
