"""`python -m runner` in a subprocess: its environment, and start / finish for processes started together."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import ROOT, tiny_unless_named


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR",)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def start(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m runner out_root=tmp_path *args` (olmoe_tiny unless the args name a model)."""
    return subprocess.Popen([sys.executable, "-m", "runner", f"out_root={tmp_path}", *tiny_unless_named(args)], cwd=ROOT,
                            env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err
