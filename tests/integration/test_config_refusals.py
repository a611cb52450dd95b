"""Issue 13, robustness round 2: bad configs end in one line before anything runs (group overrides that are not
names, broken YAML, typos inside a sweep, unknown keys from files, instantiation targets), secrets stay out of the
results; in-process, through the CLI's preflight. The cases that need a real process (exit code, nothing written):
tests/e2e/test_cli_refusals.py; Ctrl-C: tests/e2e/test_interrupt.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import DATA
from helpers.config_dirs import config_dir
from helpers.jobs import latest_run, run_job
from runner.cli.preflight import preflight


# -- 1: a group override that is not a name ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["selector=0.9"], "selector=0.9: 'selector' is a config group and takes an option name, one of: cumsum"),
    (["-m", "selector=0.9"], "selector=0.9: 'selector' is a config group"),
    (["dataset=true"], "dataset=true: 'dataset' is a config group"),
    (["device=null"], "device=null: 'device' is a config group"),
    (["-m", "model=5,olmoe_tiny"], "job 0 [model=5]: model=5: 'model' is a config group and takes an option name"),
    (["+dataset=7"], "+dataset=7: 'dataset' is a config group"),
])
def test_every_group_with_a_non_string_value_is_named(argv, needle):
    assert needle in preflight(argv)


# -- 2: malformed and binary YAML ---------------------------------------------------------------------------------------
def test_binary_yaml_is_named(tmp_path):
    confdir = config_dir(tmp_path)
    message = preflight(["--config-dir", str(confdir), "experiment=binary"])
    assert message == f"{confdir / 'experiment' / 'binary.yaml'}: not a UTF-8 text file (a binary file?); fix or remove it"


# -- 10: a typo inside a sweep fails the sweep before any job runs ------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["-m", "topk=1,2", "selector=router,top_p"], "job 1 [topk=1 selector=top_p out_root="),
    (["-m", "topk=1,2", "selector=router,top_p"], "]: In 'config': Could not find 'selector/top_p'"),
    (["-m", "model=olmoe_tiny,mixtral_tiny", "+model.weigths=random,meta"],
     "job 0 [model=olmoe_tiny +model.weigths=random out_root="),
    (["-m", "model=olmoe_tiny,mixtral_tiny", "+model.weigths=random,meta"],
     "]: model.weigths: unknown key (did you mean model.weights?)"),
])
def test_every_planned_job_is_composed_first(tmp_path, argv, needle):
    message = preflight([*argv, f"out_root={tmp_path}"])
    assert message is not None and needle in message and message.endswith("; nothing was run"), message
    assert not (tmp_path / "results").exists()


def test_valid_sweeps_and_launcher_presets_pass(tmp_path):
    for argv in (["-m", "topk=1,2,4"], ["-m", "experiment=smoke"], ["-m", "experiment=paper_topk"],
                 ["-m", "hydra/launcher=local_parallel", "model=olmoe_tiny,mixtral_tiny"],
                 ["-m", "hydra/launcher=submitit_local", "topk=1,2"], ["selector=cumsum", "selector.threshold=0.5"]):
        assert preflight([*argv, f"out_root={tmp_path}"]) is None, argv


# -- 12: unknown keys from the command line and from files --------------------------------------------------------------
def test_unknown_keys_wherever_they_come_from(tmp_path):
    confdir = config_dir(tmp_path)
    typo = "model.weigths: unknown key (did you mean model.weights?); python -m runner --help lists every key"
    from runner.cli.preflight import check_command_line

    assert check_command_line(["+model.weigths=random"]) == typo  # what Hydra's hint tells a user to type
    assert preflight(["--config-dir", str(confdir), "experiment=typo"]) == typo
    assert preflight(["--config-dir", str(confdir), "model=mine"]).startswith("model.hiden_size: unknown key")


# -- 16: configs cannot instantiate anything but the project's classes and Hydra's plugins -------------------------------
@pytest.mark.parametrize("override,key", [
    ("hydra.job_logging.handlers.file.class=pathlib.Path", "hydra.job_logging.handlers.file.class"),
    ("hydra/launcher=basic", None),  # Hydra's own launcher
    ("hydra.sweeper._target_=runner.job.pipeline.os.system", "hydra.sweeper._target_"),
    ("+model.config.x._target_=subprocess.run", "model.config.x._target_"),
    ("+hydra.callbacks.y._target_=runner.cli.callbacks.SweepSummary", None),  # the project's own class
    ("hydra.job_logging.handlers.file.filename=/tmp/victim.log", "hydra.job_logging.handlers.file.filename"),
    ("hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/../../x", "hydra.job_logging.handlers.file.filename"),
    ("hydra.job.name=../../victim", "hydra.job.name"),
])
def test_every_target_in_the_composed_config_is_checked(tmp_path, override, key):
    message = preflight([override, f"out_root={tmp_path}"])
    if key is None:
        assert message is None
    else:
        assert message is not None and message.startswith(f"{key}: "), message


def test_a_logging_factory_from_a_file_is_checked(tmp_path):
    message = preflight(["--config-dir", str(config_dir(tmp_path)), "experiment=logger"])
    assert message.startswith("hydra.job_logging.formatters.simple.(): 'os.system' not one of"), message


def test_a_pickled_rerun_is_refused(tmp_path):
    pickled = tmp_path / "config.pickle"
    pickled.write_bytes(b"not read")
    assert preflight(["--experimental-rerun", str(pickled)]).startswith("--experimental-rerun is not supported: it "
                                                                        "loads a pickled config")


def test_a_config_dir_file_the_project_shadows_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "olmoe_tiny.yaml").write_text("name: mine\n")
    assert preflight(["--config-dir", str(tmp_path)]) == (
        f"{tmp_path / 'model' / 'olmoe_tiny.yaml'}: never read, the project's conf/model/olmoe_tiny.yaml has the same "
        "name and comes first; rename it (a primary config: --config-name NAME)")


def test_the_test_only_allow_list(monkeypatch, tmp_path):
    plugin = ["+hydra.callbacks.c._target_=crash_callback.CrashOnTopk", f"out_root={tmp_path}"]
    monkeypatch.syspath_prepend(str(DATA / "plugins"))
    assert "'crash_callback.CrashOnTopk' not one of the project's classes" in preflight(plugin)
    monkeypatch.setenv("RUNNER_ALLOW_TARGETS", "crash_callback")
    assert preflight(plugin) is None


# -- 17: environment variables stay out of stored configs, except the documented path keys -------------------------------
def test_environment_interpolations_are_stored_unresolved(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hf_s3cr3t")
    monkeypatch.setenv("RUNNER_OUT", str(tmp_path))
    out = run_job(tmp_path, "out_root=${oc.env:RUNNER_OUT,outputs}", "tag=${oc.env:SECRET_TOKEN}",
                  "+model.config.rope_scaling_note=x-${oc.env:HOME}", "max_batches=1", "seq_len=32")
    assert out["status"] == "ok"
    row = latest_run(tmp_path)
    assert row["tag"] == "${oc.env:SECRET_TOKEN}"
    stored = row["config_yaml"]
    assert "hf_s3cr3t" not in stored and str(Path.home()) not in stored.replace(str(tmp_path), "")
    assert "tag: ${oc.env:SECRET_TOKEN}" in stored and "rope_scaling_note: x-${oc.env:HOME}" in stored
    assert f"out_root: {tmp_path}\n" in stored and f"results_dir: {tmp_path}/results\n" in stored  # path keys resolve


def test_a_failed_row_keeps_the_tag_unresolved(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hf_s3cr3t")
    with pytest.raises(SystemExit, match="topk: 9 exceeds the 8 experts"):
        run_job(tmp_path, "tag=${oc.env:SECRET_TOKEN}", "topk=9", "on_error=record")
    row = latest_run(tmp_path)
    assert row["status"] == "failed" and row["tag"] == "${oc.env:SECRET_TOKEN}"


# -- 10: a lost job of another model is not labelled with the default model's top-k --------------------------------------
def test_lost_jobs_of_another_model_get_no_borrowed_topk(tmp_path):
    import pandas as pd

    from runner.cli.callbacks import SweepSummary

    state = dict(sweep_dir=str(tmp_path / "sweep"), sweep_id="s1", results_dir=str(tmp_path / "results"),
                 planned=[["model=olmoe_tiny"], ["model=mixtral_tiny"], ["model=mixtral_tiny", "topk=1"]],
                 model="olmoe_tiny", defaults={"selector": "topk", "dataset": "builtin", "topk": 2}, done=False)
    (tmp_path / "sweep").mkdir()
    assert SweepSummary(print_summary=False).finish(state) == 3
    runs = pd.read_parquet(tmp_path / "results" / "table=runs").sort_values("job_num")
    assert list(runs["error_type"]) == ["LostJob"] * 3
    assert runs["topk"].tolist()[0] == 2 and pd.isna(runs["topk"].tolist()[1]) and runs["topk"].tolist()[2] == 1
