"""A resumed job's row: a `skipped` runs row (resume=true found the job done) shows the metrics of the run it
reused; the latest row of each job. Used by the sweep summary, load() and the selections of reports and comparisons."""
from __future__ import annotations

# the columns of a resumed (`skipped`) row that stay its own when it takes the metrics of the run it reused
RESUMED_OWN = ("status", "run_id", "resumed_from", "sweep_id", "sweep_dir", "job_num", "job_dir", "timestamp",
               "overrides")


def fill_resumed(runs, reused=None):
    """Each `skipped` row (a resumed job, `resumed_from=<run_id>`) with the metrics of the run it reused, found in
    `reused` (runs rows; default: `runs` itself); the RESUMED_OWN columns stay the skipped row's. A row whose run is
    not there stays as it is. Returns a new frame, same columns and dtypes, index 0..n-1."""
    import pandas as pd

    skipped = runs["status"] == "skipped" if len(runs) else None
    if skipped is None or not skipped.any():
        return runs.reset_index(drop=True)
    reused = runs if reused is None else reused
    by_id = reused.drop_duplicates("run_id", keep="last").set_index("run_id")
    rows = []
    for _, row in runs.iterrows():
        prior = row["resumed_from"]
        if row["status"] == "skipped" and isinstance(prior, str) and prior in by_id.index:
            filled = by_id.loc[prior].copy()
            for key in RESUMED_OWN:
                filled[key] = row[key]
            rows.append(filled)
        else:
            rows.append(row)
    return pd.DataFrame(rows, columns=runs.columns).astype(runs.dtypes.to_dict()).reset_index(drop=True)


def latest_per_job(runs, read_runs):
    """The latest runs row of each job (per job_num; rows without one, single runs, each stay), a resumed (`skipped`)
    one with the metrics of the run it reused (fill_resumed, those runs read by read_runs(run ids): the caller's
    reader, so this module reads nothing itself)."""
    if not len(runs):
        return runs
    runs = runs.sort_values("timestamp", kind="stable")
    runs = runs[~runs["job_num"].duplicated(keep="last") | runs["job_num"].isna()]
    resumed = list(runs.loc[runs["status"] == "skipped", "resumed_from"].dropna().unique())
    if resumed:
        runs = fill_resumed(runs, read_runs(resumed))
    return runs.reset_index(drop=True)
