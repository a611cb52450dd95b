"""Issue 13, robustness round 2: bad configs end in one line before anything runs (group overrides that are not
names, broken YAML, typos inside a sweep, unknown keys from files, instantiation targets), secrets stay out of the
results, Ctrl-C is recorded as an interruption."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DATA, ROOT
from helpers.cli import cli_env
from helpers.jobs import latest_run, run_job
from runner.preflight import preflight

EVIL = """# @package _global_
hydra:
  callbacks:
    x:
      _target_: builtins.open
      _args_: [{victim}, "w"]
"""


def config_dir(tmp: Path) -> Path:
    """A --config-dir with a malformed, a binary, an evil and two typo'd files."""
    root = tmp / "confdir"
    (root / "experiment").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "experiment" / "broken.yaml").write_text("# @package _global_\nmodel:\n  name: [unclosed\n")
    (root / "experiment" / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81" * 16)
    (root / "experiment" / "typo.yaml").write_text("# @package _global_\nmodel:\n  weigths: random\n")
    (root / "experiment" / "evil.yaml").write_text(EVIL.format(victim=tmp / "victim.txt"))
    (root / "experiment" / "logger.yaml").write_text("# @package _global_\nhydra:\n  job_logging:\n    formatters:\n"
                                                     "      simple:\n        (): os.system\n")
    (root / "model" / "mine.yaml").write_text("defaults:\n  - olmoe_tiny\n  - _self_\nname: mine\nhiden_size: 8\n")
    return root


def start(tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", *args, f"out_root={tmp}"], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The CLI cases that need a real process (exit code, nothing written, the victim file), started together."""
    tmp = tmp_path_factory.mktemp("cli")
    confdir = config_dir(tmp)
    (tmp / "victim.txt").write_text("precious")
    cases = {
        "group_int": ["model=5"],
        "sweep_typo": ["-m", "model=olmoe_tiny,olmo", "max_batches=1", "seq_len=32"],
        "evil_experiment": ["--config-dir", str(confdir), "experiment=evil", "max_batches=1", "seq_len=32"],
        "touch": ["+hydra.callbacks.t._target_=runner.job.Path.touch", f"+hydra.callbacks.t._args_=[{tmp / 'made'}]",
                  "max_batches=1", "seq_len=32"],
        "broken_yaml": ["--config-dir", str(confdir), "experiment=broken"],
    }
    procs = {name: start(tmp / name, *args) for name, args in cases.items()}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        done[name] = (proc.returncode, out, err)
    return tmp, done


def one_line(result) -> str:
    code, out, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("runner: error: "), (code, err)
    assert "Traceback" not in out + err
    return lines[0]


# -- 1: a group override that is not a name ---------------------------------------------------------------------------
def test_group_override_that_is_a_number_is_one_line(cli):
    line = one_line(cli[1]["group_int"])
    assert line.startswith("runner: error: model=5: 'model' is a config group and takes an option name, one of: ")
    assert "olmoe_tiny" in line and "ValueError" not in line


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
def test_malformed_yaml_is_one_line_naming_the_file(cli):
    tmp, runs = cli
    line = one_line(runs["broken_yaml"])
    assert f"{tmp / 'confdir' / 'experiment' / 'broken.yaml'}: not valid YAML (" in line and "at line 4, column 1" in line


def test_binary_yaml_is_named(tmp_path):
    confdir = config_dir(tmp_path)
    message = preflight(["--config-dir", str(confdir), "experiment=binary"])
    assert message == f"{confdir / 'experiment' / 'binary.yaml'}: not a UTF-8 text file (a binary file?); fix or remove it"


# -- 10: a typo inside a sweep fails the sweep before any job runs ------------------------------------------------------
def test_sweep_with_an_unknown_option_runs_nothing_and_writes_nothing(cli):
    tmp, runs = cli
    line = one_line(runs["sweep_typo"])
    assert line.startswith("runner: error: job 1 [model=olmo max_batches=1 seq_len=32 ") and \
        "Could not find 'model/olmo'; nothing was run" in line, line
    assert not (tmp / "sweep_typo").exists()  # no results tree, no model=olmo partition, no sweep dir
    assert not runs["sweep_typo"][1]  # no summary


@pytest.mark.parametrize("argv,needle", [
    (["-m", "topk=1,2", "selector=topk,top_p"], "job 1 [topk=1 selector=top_p out_root="),
    (["-m", "topk=1,2", "selector=topk,top_p"], "]: In 'config': Could not find 'selector/top_p'"),
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
    from runner.schema import check_command_line

    assert check_command_line(["+model.weigths=random"]) == typo  # what Hydra's hint tells a user to type
    assert preflight(["--config-dir", str(confdir), "experiment=typo"]) == typo
    assert preflight(["--config-dir", str(confdir), "model=mine"]).startswith("model.hiden_size: unknown key")


# -- 16: configs cannot instantiate anything but the project's classes and Hydra's plugins -------------------------------
def test_an_experiment_cannot_open_a_file(cli):
    tmp, runs = cli
    line = one_line(runs["evil_experiment"])
    assert line == ("runner: error: hydra.callbacks.x._target_: 'builtins.open' not one of the project's classes "
                    "(runner.*, handlers.*) or Hydra's plugins (hydra._internal.*, hydra_plugins.*); configs may only "
                    "instantiate those (refused before anything was instantiated)")
    assert (tmp / "victim.txt").read_text() == "precious"
    assert not (tmp / "evil_experiment").exists()


def test_a_target_reached_through_a_project_module_is_refused(cli):
    tmp, runs = cli
    line = one_line(runs["touch"])
    assert "hydra.callbacks.t._target_: 'runner.job.Path.touch' is not a class defined in runner.*" in line
    assert not (tmp / "made").exists()


@pytest.mark.parametrize("override,key", [
    ("hydra.job_logging.handlers.file.class=pathlib.Path", "hydra.job_logging.handlers.file.class"),
    ("hydra/launcher=basic", None),  # Hydra's own launcher
    ("hydra.sweeper._target_=runner.job.os.system", "hydra.sweeper._target_"),
    ("+model.config.x._target_=subprocess.run", "model.config.x._target_"),
    ("+hydra.callbacks.y._target_=runner.callbacks.SweepSummary", None),  # the project's own class
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


# -- 9: Ctrl-C mid-sweep -----------------------------------------------------------------------------------------------
def test_ctrl_c_mid_sweep_is_one_line_rc_130_and_the_job_is_recorded_interrupted(tmp_path):
    import random
    import signal
    import time

    import pandas as pd

    words = "the of and to in is was for on that with as by at from his her an which or were are be".split()
    rng = random.Random(0)
    big = tmp_path / "big.txt"  # ~1.2 MB: job 1 takes tens of seconds, job 0 (max_batches=1) a moment
    big.write_text("\n".join(" ".join(rng.choice(words) for _ in range(200)) for _ in range(1500)))
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "runner", "-m", "max_batches=1,null", "dataset=local",
                             f"dataset.path={big}", "seq_len=64", f"out_root={tmp_path}", f"hydra.sweep.dir={sweep_dir}"],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and not (sweep_dir / "1").is_dir() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # job 1 is loading or profiling its text
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == ("runner: interrupted (Ctrl-C): job 1 is recorded with status=interrupted; run the same "
                           "command with resume=true to run only what is missing"), err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    runs = pd.read_parquet(tmp_path / "results" / "table=runs").sort_values("job_num")
    assert list(runs["status"]) == ["ok", "interrupted"] and list(runs["job_num"]) == [0, 1]
    assert runs["error"].iloc[1] == "interrupted (Ctrl-C / SIGINT) before the job finished"
    assert "hard crash" not in " ".join(runs["error"].dropna())


# -- 10: a lost job of another model is not labelled with the default model's top-k --------------------------------------
def test_lost_jobs_of_another_model_get_no_borrowed_topk(tmp_path):
    import pandas as pd

    from runner.callbacks import SweepSummary

    state = dict(sweep_dir=str(tmp_path / "sweep"), sweep_id="s1", results_dir=str(tmp_path / "results"),
                 planned=[["model=olmoe_tiny"], ["model=mixtral_tiny"], ["model=mixtral_tiny", "topk=1"]],
                 model="olmoe_tiny", defaults={"selector": "topk", "dataset": "builtin", "topk": 2}, done=False)
    (tmp_path / "sweep").mkdir()
    assert SweepSummary(print_summary=False).finish(state) == 3
    runs = pd.read_parquet(tmp_path / "results" / "table=runs").sort_values("job_num")
    assert list(runs["error_type"]) == ["LostJob"] * 3
    assert runs["topk"].tolist()[0] == 2 and pd.isna(runs["topk"].tolist()[1]) and runs["topk"].tolist()[2] == 1


def test_ctrl_c_anywhere_in_a_sweep_of_quick_jobs_is_one_line(tmp_path):
    """Jobs of a few ms (meta weights): the interrupt lands in a job, in Hydra's config loader or its launcher."""
    import re
    import signal
    import time

    import pandas as pd

    delays = (0.0, 0.15)
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "-m", "model.weights=meta", "topk=1,2,3,4,5,6,7,8",
                               f"out_root={tmp_path / str(i)}", f"hydra.sweep.dir={tmp_path / str(i) / 'sweep'}"],
                              cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(len(delays))]
    for i, (proc, delay) in enumerate(zip(procs, delays)):
        runs = tmp_path / str(i) / "results" / "table=runs"
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and not list(runs.glob("*/part-*.parquet")):
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert re.fullmatch(r"runner: interrupted \(Ctrl-C\): (job \d is recorded with status=interrupted|no job was "
                            r"running); run the same command with resume=true to run only what is missing\n", err), err
        assert "Traceback" not in out and "Error" not in out
        status = pd.read_parquet(tmp_path / str(i) / "results" / "table=runs")["status"]
        assert set(status) <= {"ok", "interrupted"} and (status == "interrupted").sum() <= 1
