"""The stored FLOPs baseline (tests/baselines/flops.csv) and `python -m runner.baseline check|update`, in-process
(`runner.baseline.main`); the command itself in a subprocess is tests/e2e/test_cli_errors.py.

Diff labels are from the point of view of the code now: `missing` = in the baseline file, not produced now;
`extra` = produced now, not in the file; `renamed: old -> new` = a missing and an extra entry with the same value whose
keys differ in one field (model, k, selector, dataset or layer range).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pandas as pd
import pytest

from helpers import BASELINES
from helpers.jobs import run_job
from runner import baseline as bl
from runner.job import data
from runner.config.schema import DatasetConfig, Weights

STORED = BASELINES / "flops.csv"
FULL_SIZE = ("deepseek_v2_lite", "deepseek_v3", "gpt_oss", "granite_moe", "mixtral", "olmoe", "phimoe", "qwen3_moe",
             "qwen_moe")
TINY = ("deepseek_v3_tiny", "mixtral_tiny", "olmoe_tiny", "qwen2_moe_tiny")
TRAINED = ("olmoe_pydoc",)  # shipped in the package: a real forward pass of the real weights, as for the tiny models


@pytest.fixture(scope="module")
def now() -> list[bl.Entry]:
    """The built-in entries recomputed once for this module (meta builds + tiny forward passes, a few seconds)."""
    return bl.builtin_entries()


@pytest.fixture
def cached(monkeypatch, now):
    """`main()` reuses the module's recomputation instead of rebuilding every model per test."""
    monkeypatch.setattr(bl.compute, "builtin_entries", lambda report=None: list(now))
    return now


def stored() -> dict[str, bl.Entry]:
    return {e.key: e for e in bl.load(STORED)}


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def set_value(lines: list[str], key: str, value: str, tolerance: str | None = None) -> list[str]:
    out, hit = [], False
    for line in lines:
        fields = next(csv.reader([line]))
        if fields[0] == key:
            hit = True
            fields[7] = value
            if tolerance is not None:
                fields[8] = tolerance
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(fields)
            line = buffer.getvalue()
        out.append(line)
    assert hit, key
    return out


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = bl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------------------------------
# The stored file
def test_stored_file_holds_the_documented_numbers():
    s = stored()
    # OLMoE-1B-7B (the README's worked example): router 262,144 + k x 12,582,912
    assert s["olmoe|k=8|flops_per_token[0-15]"].value == 100_925_440
    assert s["olmoe|k=4|flops_per_token[0-15]"].value == 50_593_792
    assert s["olmoe|k=8|moe_flops_per_token"].value == 1_614_807_040
    assert s["olmoe|flops_router[0-15]"].value == 262_144 and s["olmoe|flops_per_expert[0-15]"].value == 12_582_912
    assert s["olmoe|params_total"].value == 6_919_161_856
    assert s["olmoe|k=8|params_active"].value == 1_282_017_280
    assert s["olmoe|moe_layers"].value == 16 and s["olmoe|default_top_k"].value == 8
    # DeepSeek-V3: 58 MoE layers (3-60), group-limited sigmoid routing, one shared expert
    assert s["deepseek_v3|k=8|flops_per_token[3-60]"].value == 796_393_472
    assert s["deepseek_v3|k=8|moe_flops_per_token"].value == 46_190_821_376
    assert s["deepseek_v3|params_total"].value == 671_026_404_352
    assert s["deepseek_v3|moe_layers"].value == 58
    # the other full-size checkpoints at their default top-k (the numbers in conf/model/*.yaml)
    assert s["deepseek_v2_lite|k=6|flops_per_token[1-26]"].value == 138_674_176
    assert s["deepseek_v2_lite|params_total"].value == 15_706_484_224
    assert s["mixtral|k=2|flops_per_token[0-31]"].value == 704_708_608
    assert s["qwen_moe|k=4|flops_per_token[0-23]"].value == 138_661_888
    assert s["qwen3_moe|k=8|flops_per_token[0-47]"].value == 76_021_760
    assert s["gpt_oss|k=4|flops_per_token[0-23]"].value == 199_249_920
    assert s["granite_moe|k=8|flops_per_token[0-23]"].value == 25_231_360
    assert s["phimoe|k=2|flops_per_token[0-31]"].value == 314_703_872
    # tiny models: measured (FlopCounterMode over a real forward pass) == analytic at fixed top-k, exactly
    for model, layers, per_layer in (("olmoe_tiny", "0-1", 25_600), ("mixtral_tiny", "0-1", 25_600),
                                     ("qwen2_moe_tiny", "0-1", 44_160), ("deepseek_v3_tiny", "1-2", 37_888)):
        assert s[f"{model}|k=2|flops_per_token[{layers}]"].value == per_layer
        measured = s[f"{model}|k=2|router|{bl.DATASET}|flops_measured_per_token[{layers}]"]
        assert measured.value == per_layer and measured.tolerance is None
        assert s[f"{model}|k=2|router|{bl.DATASET}|moe_flops_per_token_measured"].value == 2 * per_layer
        assert 5.0 < s[f"{model}|k=2|router|{bl.DATASET}|loss"].value < 6.0  # random init: near ln(259) = 5.56
    assert s[f"olmoe_tiny|k=4|router|{bl.DATASET}|flops_measured_per_token[0-1]"].value == 1024 + 4 * 12_288
    # kneedle (k_max 4) really skips experts: between k=1 and k=4, and its FLOPs follow its mean k exactly
    knee = f"olmoe_tiny|k=4|kneedle(k_max=4)|{bl.DATASET}"
    k_mean = s[f"{knee}|k_mean"].value
    assert 1 < k_mean < 4
    assert s[f"{knee}|moe_flops_per_token_measured"].value == 2 * 1024 + 2 * k_mean * 12_288
    # the trained default (H=I=128, E=8, 4 MoE layers): measured == analytic at fixed k; a loss far below ln(259)
    per_layer = 2 * 128 * 8 + 2 * 6 * 128 * 128
    assert s["olmoe_pydoc|k=2|flops_per_token[0-3]"].value == per_layer == 198_656
    assert s[f"olmoe_pydoc|k=2|router|{bl.DATASET}|moe_flops_per_token_measured"].value == 4 * per_layer
    assert s[f"olmoe_pydoc|k=2|router|{bl.DATASET}|loss"].value < 3.5
    assert s[f"olmoe_pydoc|k=2|router|{bl.DATASET}|loss"].tolerance == bl.LOSS_RTOL


def test_stored_file_shape_and_format():
    text = STORED.read_text()
    entries = bl.load(STORED)
    assert 150 <= len(entries) <= 600  # reviewable: hundreds of rows, not thousands
    assert text.endswith("\n") and "\r" not in text
    assert bl.dumps(entries) == text  # canonical: sorted, ints as ints, floats as shortest repr
    assert not re.search(r",-?\d+\.0,", text)  # integers are written as integers
    assert {e.model for e in entries} == set(FULL_SIZE) | set(TINY) | set(TRAINED)
    for e in entries:
        if e.metric == "loss":
            assert e.tolerance == bl.LOSS_RTOL
        elif e.selector.startswith("kneedle"):
            assert e.tolerance == bl.ROUTING_RTOL, e.key  # routing-dependent: the only FLOPs with a tolerance
        else:
            assert e.tolerance is None, e.key  # analytic, and measured at fixed top-k: exact
    for model in FULL_SIZE:  # default top-k and a few others, no measured rows (meta device)
        ks = {e.k for e in entries if e.model == model and e.metric == "moe_flops_per_token"}
        assert len(ks) >= 3 and not any(e.dataset for e in entries if e.model == model)


def test_stored_file_is_what_the_code_computes_now(now):
    # with the file's own tolerances: float32 losses differ in the 8th digit from CPU to CPU, FLOPs must not
    diffs = bl.compare(bl.load(STORED), now)
    assert diffs == [], "\n" + bl.table(diffs)


def test_recomputing_on_one_machine_gives_identical_bytes(now):
    """Where determinism holds (one machine), two computations give the same file byte for byte. The models with a
    forward pass (random weights, the shipped checkpoint) are the ones whose floats could vary; the meta-device entries
    are integers."""
    documents = data.load_documents(DatasetConfig())
    again = [e for cfg in bl.model_configs() if cfg.weights is Weights.random or cfg.name in TRAINED
             for e in bl.model_entries(cfg, documents)]
    first = [e for e in now if e.model in {e.model for e in again}]
    assert again and bl.dumps(again) == bl.dumps(first)


def test_check_passes_on_the_stored_file(cached, capsys):
    # the command itself runs in .ci/run; the CLI's own exit path is test_corrupt_file_end_to_end_has_no_traceback
    code, out, err = run_main(capsys, "check")
    assert code == bl.EXIT_OK, out + err
    assert out.startswith(f"baseline OK: {len(bl.load(STORED))} entries match") and err == ""


# ---------------------------------------------------------------------------------------------------------------------
# Differences
def test_perturbed_copy_fails_with_one_line_per_difference(tmp_path, cached, capsys):
    lines = lines_of(STORED)
    lines = set_value(lines, "olmoe|k=8|flops_per_token[0-15]", "100925441")  # one changed value
    lines = [l for l in lines if not l.startswith("mixtral|k=4|params_active,")]  # one row removed from the file
    lines.append("olmoe_huge|params_total,olmoe_huge,,,,params_total,,1,")  # one row the code does not produce
    code, out, err = run_main(capsys, "check", "--file", str(write(tmp_path / "perturbed.csv", lines)))
    assert code == bl.EXIT_DIFF
    diff_lines = out.splitlines()
    assert diff_lines[0].split() == ["entry", "baseline", "now", "delta", "%"]
    assert re.search(r"^changed: olmoe\|k=8\|flops_per_token\[0-15\]\s+100,925,441\s+100,925,440\s+-9\.91e-07%$",
                     out, re.M)
    assert re.search(r"^missing: olmoe_huge\|params_total\s+1\s+-$", out, re.M)
    assert re.search(r"^extra: mixtral\|k=4\|params_active\s+-\s+24,154,214,400$", out, re.M)
    assert len(diff_lines) == 2 + 3 + 1  # header, rule, three differences, summary
    assert diff_lines[-1].startswith("baseline FAILED: 3 difference(s) (1 changed, 1 missing, 1 extra)")
    assert err == ""


def test_renamed_layer_range_and_model(tmp_path, cached, capsys):
    lines = [l.replace("olmoe|k=8|flops_per_token[0-15],olmoe,8,,,flops_per_token,0-15,",
                       "olmoe|k=8|flops_per_token[0-14],olmoe,8,,,flops_per_token,0-14,") for l in lines_of(STORED)]
    code, out, _ = run_main(capsys, "check", "--file", str(write(tmp_path / "layers.csv", lines)))
    assert code == bl.EXIT_DIFF
    assert re.search(r"^renamed: olmoe\|k=8\|flops_per_token\[0-14\] -> olmoe\|k=8\|flops_per_token\[0-15\]"
                     r"\s+100,925,440\s+100,925,440\s+\+0%$", out, re.M)
    assert "missing:" not in out and "extra:" not in out

    lines = [l.replace("mixtral_tiny", "mixtral_small") for l in lines_of(STORED)]
    code, out, _ = run_main(capsys, "check", "--file", str(write(tmp_path / "model.csv", lines)))
    renamed = [l for l in out.splitlines() if l.startswith("renamed: mixtral_small|")]
    assert code == bl.EXIT_DIFF and len(renamed) == sum(e.model == "mixtral_tiny" for e in bl.load(STORED))
    assert "renamed: mixtral_small|k=2|flops_per_token[0-1] -> mixtral_tiny|k=2|flops_per_token[0-1]" in out
    assert "missing:" not in out and "extra:" not in out and "changed:" not in out


def test_tolerance_only_where_measured(tmp_path, cached, capsys):
    knee = f"olmoe_tiny|k=4|kneedle(k_max=4)|{bl.DATASET}|moe_flops_per_token_measured"
    base = stored()[knee].value
    # one flipped per-token decision in one layer: one expert in 256 tokens = 48 FLOPs/token, within 2e-3
    lines = set_value(lines_of(STORED), knee, str(base + 48))
    code, out, _ = run_main(capsys, "check", "--file", str(write(tmp_path / "flip.csv", lines)))
    assert code == bl.EXIT_OK and out.startswith("baseline OK")
    lines = set_value(lines_of(STORED), knee, str(int(base * 1.01)))  # a 1 % change is a regression
    code, out, _ = run_main(capsys, "check", "--file", str(write(tmp_path / "knee.csv", lines)))
    assert code == bl.EXIT_DIFF and f"changed: {knee}" in out

    loss = f"olmoe_tiny|k=2|router|{bl.DATASET}|loss"
    value = stored()[loss].value
    code, _, _ = run_main(capsys, "check", "--file",
                          str(write(tmp_path / "l1.csv", set_value(lines_of(STORED), loss, repr(value * (1 + 2e-6))))))
    assert code == bl.EXIT_OK
    code, out, _ = run_main(capsys, "check", "--file",
                            str(write(tmp_path / "l2.csv", set_value(lines_of(STORED), loss, repr(value * 1.001)))))
    assert code == bl.EXIT_DIFF and f"changed: {loss}" in out

    # an exact (analytic) number off by one FLOP fails; a hand-edited tolerance is a difference too
    exact = f"olmoe_tiny|k=2|router|{bl.DATASET}|moe_flops_per_token_measured"
    code, out, _ = run_main(capsys, "check", "--file",
                            str(write(tmp_path / "e.csv", set_value(lines_of(STORED), exact, "51201"))))
    assert code == bl.EXIT_DIFF and f"changed: {exact}" in out
    code, out, _ = run_main(capsys, "check", "--file", str(write(
        tmp_path / "t.csv", set_value(lines_of(STORED), "olmoe|params_total", "6919161856", tolerance="0.1"))))
    assert code == bl.EXIT_DIFF and re.search(r"^tolerance: olmoe\|params_total\s+rtol 0\.1\s+exact", out, re.M)


def test_compare_unit():
    a = bl.Entry("m", "flops_per_token", 10, k=2, layers="0-3")
    b = bl.Entry("m", "flops_per_token", 10, k=2, layers="0-4")
    c = bl.Entry("m", "flops_per_token", 10, k=4, layers="0-4")  # two fields differ: not a rename
    assert [d.label for d in bl.compare([a], [b])] == ["renamed: m|k=2|flops_per_token[0-3] -> m|k=2|flops_per_token[0-4]"]
    assert [d.kind for d in bl.compare([a], [c])] == ["missing", "extra"]
    assert bl.compare([bl.Entry("m", "status", "ok")], [bl.Entry("m", "status", "failed")])[0].kind == "changed"
    assert bl.compare([a], [a]) == []


# ---------------------------------------------------------------------------------------------------------------------
# update
def test_update_round_trips(tmp_path, cached, capsys):
    path = tmp_path / "baselines" / "copy.csv"
    code, out, _ = run_main(capsys, "update", "--file", str(path))
    assert code == bl.EXIT_OK and "new file" in out
    first = path.read_bytes()
    assert bl.compare(bl.load(STORED), bl.load(path)) == []  # the stored file, within its tolerances
    code, out, _ = run_main(capsys, "check", "--file", str(path))
    assert code == bl.EXIT_OK and out.startswith(f"baseline OK: {len(bl.load(path))} entries match")
    code, out, _ = run_main(capsys, "update", "--file", str(path))
    assert code == bl.EXIT_OK and "no changes" in out and path.read_bytes() == first

    # update over a perturbed file shows what it changes, then the file checks clean
    write(path, set_value(lines_of(STORED), "olmoe|k=8|flops_per_token[0-15]", "1"))
    code, out, _ = run_main(capsys, "update", "--file", str(path))
    assert code == bl.EXIT_OK and "changed: olmoe|k=8|flops_per_token[0-15]" in out and "(1 changed;" in out
    assert path.read_bytes() == first
    # an unreadable file is replaced, with a note
    path.write_text("garbage\n")
    code, out, err = run_main(capsys, "update", "--file", str(path))
    assert code == bl.EXIT_OK and "replacing an unreadable file" in err and path.read_bytes() == first


# ---------------------------------------------------------------------------------------------------------------------
# Corrupt files and usage
HEADER = ",".join(bl.COLUMNS)
GOOD = "olmoe|params_total,olmoe,,,,params_total,,6919161856,"


@pytest.mark.parametrize("content, message", [
    (None, "baseline file not found"),
    ("", "the header must be"),
    ("a,b,c\n" + GOOD + "\n", "the header must be"),
    (HEADER + "\nolmoe|params_total,olmoe,,,,params_total,6919161856,\n", "8 fields, expected 9"),
    (HEADER + "\nolmoe|k=x|m,olmoe,x,,,m,,1,\n", "k 'x' is not an integer"),
    (HEADER + "\n" + GOOD + "fast\n", "tolerance 'fast' is not a number"),
    (HEADER + "\nolmoe|params,olmoe,,,,params_total,,6919161856,\n", "does not match its fields"),
    (HEADER + "\n" + GOOD + "\n" + GOOD + "\n", "duplicate key"),
    (HEADER + "\nolmoe|m[a-b],olmoe,,,,m,a-b,1,\n", "layers 'a-b'"),
    (HEADER + "\nolmoe|m,olmoe,,,,m,,,\n", "must not be empty"),
    (HEADER + '\n"unterminated,olmoe\n', "corrupt baseline file"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
])
def test_missing_or_corrupt_file_is_one_line_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "base.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, out, err = run_main(capsys, "check", "--file", str(path))  # fails before anything is computed
    assert code == bl.EXIT_USAGE and out == ""
    assert err.startswith("baseline: error: ") and err.count("\n") == 1 and message in err, err


def test_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = run_main(capsys, "check", "--results", str(tmp_path))
    assert code == bl.EXIT_USAGE and "--results needs --file" in err
    code, _, err = run_main(capsys, "check", "--results", str(tmp_path / "nope"), "--file", str(tmp_path / "b.csv"))
    assert code == bl.EXIT_USAGE and "no such directory" in err
    code, _, err = run_main(capsys, "update", "--results", str(tmp_path), "--file", str(tmp_path / "b.csv"))
    assert code == bl.EXIT_USAGE and "neither a sweep directory" in err
    with pytest.raises(SystemExit) as exc:
        bl.main(["verify"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------------------------------------
# Sweeps
ONE_BATCH = ("seq_len=64", "max_batches=1")
SETTING = "builtin seq_len=64 batch_size=8 max_batches=1 dtype=float32 device=cpu weights=random seed=0"  # run_setting


def test_sweep_results_pin_and_check(tmp_path, capsys):
    assert run_job(tmp_path, *ONE_BATCH, "topk=2")["status"] == "ok"
    assert run_job(tmp_path, *ONE_BATCH, "selector=kneedle", "topk=4")["status"] == "ok"
    results, pinned = tmp_path / "results", tmp_path / "pinned.csv"
    code, out, _ = run_main(capsys, "update", "--results", str(results), "--file", str(pinned))
    assert code == bl.EXIT_OK and "8 entries written" in out
    s = {e.key: e for e in bl.load(pinned)}
    assert s[f"olmoe_tiny|k=2|router|{SETTING}|status"].value == "ok"
    assert s[f"olmoe_tiny|k=2|router|{SETTING}|moe_flops_per_token"].value == 51_200
    assert s[f"olmoe_tiny|k=2|router|{SETTING}|moe_flops_per_token_measured"].value == 51_200
    assert s[f"olmoe_tiny|k=2|router|{SETTING}|moe_flops_per_token_measured"].tolerance is None
    knee = f"olmoe_tiny|k=4|kneedle(k_max=4,k_min=1)|{SETTING}"
    assert s[f"{knee}|moe_flops_per_token"].value == 2 * (1024 + 4 * 12_288)  # analytic at k_max
    assert s[f"{knee}|moe_flops_per_token_measured"].tolerance == bl.ROUTING_RTOL
    assert s[f"{knee}|loss"].tolerance == bl.SWEEP_LOSS_RTOL and 5 < s[f"{knee}|loss"].value < 6
    code, out, _ = run_main(capsys, "check", "--results", str(results), "--file", str(pinned))
    assert code == bl.EXIT_OK and out.startswith("baseline OK: 8 entries match")

    # a resumed job (status skipped, newer) reports the metrics of the run it reused: still OK
    assert run_job(tmp_path, *ONE_BATCH, "topk=2", "resume=true")["status"] == "skipped"
    code, out, _ = run_main(capsys, "check", "--results", str(results), "--file", str(pinned))
    assert code == bl.EXIT_OK, out

    # a job the pin does not know, and a loss outside its tolerance
    assert run_job(tmp_path, *ONE_BATCH, "topk=1")["status"] == "ok"
    lines = set_value(lines_of(pinned), f"{knee}|loss", repr(s[f"{knee}|loss"].value * 1.01))
    code, out, _ = run_main(capsys, "check", "--results", str(results), "--file", str(write(pinned, lines)))
    assert code == bl.EXIT_DIFF
    assert f"changed: {knee}|loss" in out and f"extra: olmoe_tiny|k=1|router|{SETTING}|status" in out


def test_sweep_dir_summary_parquet(tmp_path, capsys):
    sweep = tmp_path / "multirun" / "0"
    sweep.mkdir(parents=True)
    runs = pd.DataFrame(dict(
        model=["olmoe", "olmoe", "olmoe"], topk=[4, 8, 8], selector=["topk", "topk", "cumsum"],
        selector_params=["{}", "{}", '{"k_max": 8, "threshold": 0.9}'], dataset=["wikitext"] * 3,
        status=["ok", "ok", "failed"], flops_per_token_analytic=[809_500_672.0, 1_614_807_040.0, None],
        flops_per_token_measured=[809_500_672.0, None, None], loss=[2.51, 2.43, None],
        timestamp=pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-01"], utc=True)))
    runs.to_parquet(sweep / "summary.parquet")
    pinned = tmp_path / "pinned.csv"
    code, _, _ = run_main(capsys, "update", "--results", str(sweep), "--file", str(pinned), "--loss-rtol", "0.01")
    assert code == bl.EXIT_OK
    text = pinned.read_text()
    assert "olmoe|k=4|router|wikitext|moe_flops_per_token,olmoe,4,router,wikitext,moe_flops_per_token,,809500672,\n" in text
    assert "olmoe|k=8|router|wikitext|loss,olmoe,8,router,wikitext,loss,,2.43,0.01\n" in text
    assert '"olmoe|k=8|cumsum(k_max=8,threshold=0.9)|wikitext|status",olmoe,8,' in text  # quoted: the key has a comma
    assert len(bl.load(pinned)) == 4 + 3 + 1
    runs.loc[2, ["status", "flops_per_token_analytic"]] = ["ok", 1_614_807_040.0]  # the failed job now runs
    runs.loc[0, "loss"] = 2.52  # within 1 %
    runs.to_parquet(sweep / "summary.parquet")
    code, out, _ = run_main(capsys, "check", "--results", str(sweep), "--file", str(pinned))
    assert code == bl.EXIT_DIFF
    assert re.search(r"^changed: olmoe\|k=8\|cumsum\(k_max=8,threshold=0\.9\)\|wikitext\|status\s+failed\s+ok$", out,
                     re.M)
    assert "extra: olmoe|k=8|cumsum(k_max=8,threshold=0.9)|wikitext|moe_flops_per_token" in out
    assert "topk|wikitext|loss" not in out
