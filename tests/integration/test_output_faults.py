"""Where the app writes: a directory a user names that cannot be created is one line before anything runs, writes are
atomic with temp names unique per writer (a failed one leaves nothing), and the temp files of killed writers go."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from helpers.jobs import run_job
from runner.errors import OutputError
from runner.files import remove_stale_temps, temp_path, user_directory, write_atomic
from runner.cli.preflight import preflight


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    return path


# -- a directory through a file: one line, before anything runs --------------------------------------------------------
def test_a_sweep_or_run_dir_through_a_file_is_refused_before_hydra(tmp_path, a_file):
    assert preflight(["-m", "topk=1,2", f"hydra.sweep.dir={a_file}/sweep", f"out_root={tmp_path}"]) == (
        f"hydra.sweep.dir: cannot create the directory {a_file}/sweep ({a_file} is a file, not a directory); use a "
        "directory path")
    assert preflight([f"hydra.run.dir={a_file}/run", f"out_root={tmp_path}"]).startswith("hydra.run.dir: cannot create")
    assert not (tmp_path / "results").exists()  # no `failed` rows for jobs that never started


def test_an_offload_folder_that_is_a_file_is_refused_before_the_model(tmp_path, a_file):
    with pytest.raises(SystemExit, match=f"device.offload_folder: cannot create the directory {a_file} "
                                         r"\(.* is a file, not a directory\)"):
        run_job(tmp_path, "device=auto", f"device.offload_folder={a_file}")


def test_baseline_update_into_a_file_is_one_line(a_file, capsys):
    from runner.baseline.commands import main as baseline

    assert baseline(["update", "--file", str(a_file / "pin.csv"), "--results", str(a_file.parent)]) == 2
    err = capsys.readouterr().err
    assert err == (f"baseline: error: --file: cannot create the directory {a_file} ({a_file} is a file, not a "
                   "directory); use a directory path\n")


# -- atomic writes --------------------------------------------------------------------------------------------------
def test_a_failed_write_is_one_line_and_leaves_no_temp_file(tmp_path):
    def disk_full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write the baseline .*pin.csv \(No space left on device\)"):
        write_atomic(tmp_path / "pin.csv", disk_full, "the baseline")
    assert list(tmp_path.iterdir()) == []


def test_temp_names_are_unique_per_writer(tmp_path):
    target = tmp_path / "report.html"
    assert temp_path(target) != temp_path(target)
    assert temp_path(target).name.startswith(".report.html.") and temp_path(target).parent == tmp_path


# -- temp files of writers killed mid-write ---------------------------------------------------------------------------
def dead_pid() -> int:
    """A process id no process has now (from the top of the range, where ids are rarely in use)."""
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(top - 1, top // 2, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free process id")


def test_temp_files_of_dead_writers_are_removed_when_the_next_job_starts(tmp_path):
    from runner.results import check_writable

    dead = dead_pid()
    part = tmp_path / "results" / "table=trace" / "model=olmoe_tiny" / "part-abc-def-host-1.parquet"
    part.parent.mkdir(parents=True)
    mine = temp_path(part)
    theirs = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    for path in (mine, theirs):
        path.write_bytes(b"x" * 1000)
    check_writable(tmp_path / "results")
    assert mine.exists() and not theirs.exists()  # a live writer's temp file stays
    assert remove_stale_temps(tmp_path / "results") == 0


def test_a_user_directory_is_created_with_its_parents(tmp_path):
    assert user_directory(tmp_path / "a" / "b", "--out").is_dir()
