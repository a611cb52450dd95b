"""Issue 10 §2/§3: a newcomer's first hour. Offline hub, loading results, labels, summary, keys, help, typos, logs."""
from __future__ import annotations

import http.server
import json
import re
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from runner import results
from test_errors import ROOT, cli_env
from test_job import latest_run, run_job

SMALL = ("max_batches=1", "seq_len=64")


def online_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    """HF_HUB_OFFLINE unset (conftest sets it for the suite), an empty HF cache, a hub endpoint of our choosing."""
    env = cli_env(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"))
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    return env


# -- §2: an unreachable hub costs one probe per process, not 25 s of retries per job ---------------------------------
def test_unreachable_hub_fails_every_job_fast_with_one_line_each(tmp_path):
    # nothing listens on port 9 of this host: the hub is unreachable, as on a machine without network
    env = online_env(tmp_path, "http://127.0.0.1:9")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "runner", "-m", f"out_root={tmp_path}",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", "model=olmoe", "dataset=builtin,hf",
                          "topk=4,8", *SMALL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    elapsed = time.perf_counter() - start
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    runs = results.read_table(tmp_path / "results", "runs")
    assert list(runs["status"]) == ["failed"] * 4
    assert runs["wall_s"].sum() <= 5.0, (runs["wall_s"].tolist(), elapsed)  # was ~25 s per job
    failed = [line for line in text.splitlines() if "job failed:" in line]
    assert len(failed) == 4, text
    model_lines = [line for line in failed if "pretrained weights 'allenai/OLMoE-1B-7B-0924'" in line]
    data_lines = [line for line in failed if "dataset 'wikitext'" in line]
    assert len(model_lines) == len(data_lines) == 2, text
    assert all("the hub (http://127.0.0.1:9) is unreachable" in line for line in failed), text
    assert "Retrying" not in text and "thrown while requesting" not in text and "Traceback" not in text


def test_reachable_hub_keeps_the_online_path(monkeypatch):
    """A hub that answers (a local HTTP server here) is reachable: the runner goes online after a cache miss."""
    from huggingface_hub import constants

    from runner import hub

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub.reachable.__wrapped__() is True and constants.HF_HUB_OFFLINE is False
    finally:
        server.shutdown()


# -- §3.1: the printed run id is the stored one ---------------------------------------------------------------------------
def test_printed_run_id_filters_the_stored_rows(tmp_path, capsys):
    out = run_job(tmp_path, *SMALL)
    printed = re.search(r"\(run_id (\w+),", capsys.readouterr().out).group(1)
    runs = results.read_table(tmp_path / "results", "runs")
    assert printed == out["run_id"] and len(runs[runs["run_id"] == printed]) == 1
