"""Which jobs a report or a comparison is about: a sweep directory, a results directory, a sweep id or run id, or
`latest`, resolved to one runs row per job (its latest attempt, a resumed job with the metrics it reused) and the
results directory its other tables live in. `python -m runner.report` and `python -m runner.compare` read through it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ResultsNotFound, one_line
from .io import data_run_ids, default_results_dir, load, read_table, rows_of_jobs, safe_name
from .records import TABLES
from .summaries import combine, fill_resumed


@dataclass
class Selection:
    runs: Any  # pandas DataFrame: one runs row per job, in job order
    root: Path  # the results dir holding the jobs' layers / experts / ... rows
    label: str  # what was selected, for titles and messages
    out_dir: Path  # where a report of it goes by default

    def data_run_ids(self) -> list[str]:
        """The run ids whose rows hold the jobs' data: a resumed (`skipped`) job's are its reused run's."""
        return list(dict.fromkeys(str(i) for i in data_run_ids(self.runs) if isinstance(i, str)))

    def table(self, name: str, with_files: bool = False):
        """The rows of table `name` for these jobs (a resumed job's under its own run id, so they join its runs row),
        or None when the table is not written here (unknown to this version, or no rows); with_files: plus
        `__filename`, each row's part file."""
        if name not in TABLES or not (self.root / f"table={name}").is_dir() or not self.data_run_ids():
            return None
        frame = rows_of_jobs(self.root, name, self.runs, with_files=with_files)
        return None if frame.empty else frame


def _sweep_results_dir(sweep_dir: Path) -> Path:
    info = sweep_dir / "sweep.json"
    if info.is_file():
        try:
            named = json.loads(info.read_text()).get("results_dir")
        except (OSError, ValueError):
            named = None
        if named:
            return Path(named)
    return default_results_dir()


def select(source: str | os.PathLike, results_dir: str | os.PathLike | None = None) -> Selection:
    """`source`: a sweep directory (with sweep.json or summary.parquet), a results directory (with table=runs/: every
    job in it, the latest row per resolved config), a sweep id or run id as printed, or `latest` (what ran last in
    `results_dir`, default $RUNNER_OUT/results or outputs/results). ResultsNotFound (one line) otherwise."""
    path = Path(source).expanduser()
    if path.name.startswith("table=") and path.is_dir():
        path = path.parent
    if path.is_dir() and (path / "table=runs").is_dir():
        return _results_dir(path)
    if path.is_dir() and ((path / "sweep.json").is_file() or (path / "summary.parquet").is_file()):
        root = Path(results_dir) if results_dir is not None else _sweep_results_dir(path)
        runs = _read(lambda: load("runs", sweep=path, results_dir=root), path)
        return Selection(combine(runs, str(root)), root, f"sweep {path}", path / "report")
    if os.sep in str(source) and not path.exists():
        raise ResultsNotFound(f"{source}: no such directory")
    if path.is_dir() or os.sep in str(source) or path.exists():
        raise ResultsNotFound(f"{source}: neither a sweep directory (sweep.json, summary.parquet) nor a results "
                              "directory (table=runs/)")
    root = Path(results_dir) if results_dir is not None else default_results_dir()
    runs = _read(lambda: load("runs", sweep=str(source), results_dir=root), root)
    sweep_ids = runs["sweep_id"].dropna().unique()
    # the report goes under the results dir the command line named, never where a stored row points (sweep_dir)
    if len(sweep_ids) == 1:
        return Selection(combine(runs, str(root)), root, f"sweep {sweep_ids[0]}",
                         root / "reports" / safe_name(sweep_ids[0]))
    return Selection(fill_resumed(runs), root, f"run {runs['run_id'].iloc[0]}",
                     root / "reports" / safe_name(runs["run_id"].iloc[0]))


def _results_dir(root: Path) -> Selection:
    runs = _read(lambda: fill_resumed(read_table(root, "runs")), root)
    if runs.empty:
        raise ResultsNotFound(f"{root}: no runs rows in table=runs/")
    runs = runs.sort_values("timestamp", kind="stable")
    key = runs["config_hash"].fillna(runs["run_id"])  # a job that failed before its config resolved: its own row
    runs = runs[~key.duplicated(keep="last")]
    runs = runs.sort_values(["sweep_id", "job_num", "timestamp"], na_position="last").reset_index(drop=True)
    return Selection(runs, root, f"results {root}", root / "report")


def _read(reader, where: Path):
    try:
        return reader()
    except ResultsNotFound:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow / OS errors of a damaged directory: one line
        raise ResultsNotFound(f"{where}: cannot read the results ({type(exc).__name__}: "
                              f"{one_line(exc, 200)})") from None
