"""Single jobs in-process on tiny models: parquet schemas and values, FLOPs, quality, meta, pretrained, datasets,
resume, and re-runs that never overwrite older results."""
from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers import DATA
from helpers.jobs import E, H, I, compose_job, latest_run, moe_flops, run_job, table
from runner import results

SMALL = ("max_batches=2", "seq_len=64")


def test_default_job_writes_three_tidy_tables(tmp_path):
    out = run_job(tmp_path)
    assert out["status"] == "ok"
    root = tmp_path / "results"
    assert not (root / "table=tasks").exists()  # eval=none (the default): no task rows
    for name in ("runs", "layers", "experts"):  # the analysis tables are opt-in (analysis=full, trace=true)
        schema = results.SCHEMAS[name]
        parts = list((root / f"table={name}" / "model=olmoe_tiny").glob("part-*.parquet"))
        assert len(parts) == 1, name
        file_schema = pq.read_schema(parts[0])
        assert file_schema.names == schema.names and "model" not in file_schema.names  # partition key only in the path
        assert file_schema.equals(schema, check_metadata=False)
    # only parquet parts and their partition dirs in the results tree: no logs, no .hydra, no temp files
    assert all(p.is_dir() or p.name.startswith("part-") for p in root.rglob("*"))
    # plain pandas reads of a table root work (hive partition `model` comes back as a column)
    runs = pd.read_parquet(root / "table=runs")
    assert list(runs["model"].astype(str)) == ["olmoe_tiny"]
    row = latest_run(tmp_path)
    assert row["status"] == "ok" and row["schema_version"] == results.SCHEMA_VERSION
    assert row["topk"] == 2 and row["default_topk"] == 2 and row["selector"] == "router"
    assert row["tokens"] == row["blocks"] * 128 and row["targets"] == row["blocks"] * 127
    assert math.isclose(row["ppl"], math.exp(row["loss"]))
    assert 4.0 < row["loss"] < 7.0  # random init near log(259) = 5.56
    assert pd.isna(row["kl"]) and not row["reference"]  # default routing: no reference pass
    assert row["flops_per_token_analytic"] == row["flops_per_token_measured"] == moe_flops(2)
    assert row["flops_measured_tokens"] == 8 * 128  # first batch only
    assert row["moe_layers"] == 2 and row["k_mean"] == 2.0
    assert row["tokens_per_s"] > 0 and row["wall_s"] > 0 and row["peak_rss_bytes"] > 0
    # the whole forward: analytic (at 8 x 128) equal to measured; bytes by hand: float32, all 8 experts of each layer
    # activated in the batch (3 * H * I parameters each), the 259 x 64 input embedding not read as a matrix
    assert row["model_flops_per_token_analytic"] == row["model_flops_per_token_measured"] and row["model_flops_exact"]
    assert row["params_active"] - row["params_active_nonembedding"] == 259 * H
    expert_bytes = 3 * H * I * 4
    dense_bytes = (row["params_total"] - 2 * E * 3 * H * I - 259 * H) * 4
    assert row["param_bytes_per_token"] == (dense_bytes + 2 * E * expert_bytes) / (8 * 128)
    assert pd.isna(row["peak_tflops"]) and pd.isna(row["s_mfu_prefill"])  # CPU: no peak, no guess
    assert row["tokenizer"] == "byte" and row["dtype"] == "float32" and row["device"] == "cpu"
    assert row["torch_version"] and row["transformers_version"] and row["runner_version"]
    assert row["config_hash"] and "model:" in row["config_yaml"] and row["run_id"]
    layers = table(tmp_path, "layers")
    assert list(layers["layer"]) == [0, 1]
    assert (layers["flops_per_token_analytic"] == moe_flops(2) / 2).all()
    assert (layers["flops_measured_per_token"] == moe_flops(2) / 2).all()
    assert (layers["param_bytes"] == E * 3 * H * I * 4).all()
    assert set(layers["expert_dim_source"]) == {"config"} and (layers["expert_dim"] == I).all()
    experts = table(tmp_path, "experts")
    assert len(experts) == 2 * E and experts.groupby("layer")["load_fraction"].sum().round(6).eq(1).all()
    assert (experts.groupby("layer")["tokens"].sum() == 2 * row["tokens"]).all()  # k=2 assignments per token


@pytest.mark.parametrize("k", [1, 4])
def test_topk_changes_flops_and_triggers_quality_reference(tmp_path, k):
    run_job(tmp_path, f"topk={k}", "measure_flops=true", *SMALL)
    row = latest_run(tmp_path)
    assert row["topk"] == k and row["default_topk"] == 2
    assert row["flops_per_token_analytic"] == row["flops_per_token_measured"] == moe_flops(k)
    assert row["flops_measured_tokens"] == row["tokens"]  # measure_flops=true: every batch
    assert row["reference"] and row["kl"] >= 0 and 0 <= row["top1_agreement"] <= 1
    assert math.isclose(row["ref_ppl"], math.exp(row["ref_loss"]))
    assert row["ci_units"] >= 2  # the documents of the builtin text
    for stem in ("loss", "ppl", "kl", "top1_agreement"):  # 95 % bootstrap intervals over documents
        assert row[f"{stem}_ci_low"] <= row[stem] <= row[f"{stem}_ci_high"], stem
    delta = row["loss"] - row["ref_loss"]  # paired per document: inside the two losses' own intervals' spread
    assert row["loss_delta_ci_low"] <= delta <= row["loss_delta_ci_high"]
    assert row["loss_delta_ci_high"] - row["loss_delta_ci_low"] < row["loss_ci_high"] - row["loss_ci_low"]
    layers = table(tmp_path, "layers")
    assert (layers["top_k"] == k).all() and (layers["default_top_k"] == 2).all() and (layers["topk"] == k).all()


def test_selector_job_records_params_and_dynamic_k(tmp_path):
    run_job(tmp_path, "selector=cumsum", "selector.threshold=0.2", "topk=4", *SMALL)
    row = latest_run(tmp_path)
    assert row["selector"] == "cumsum" and row["k_max"] == 4
    params = json.loads(row["selector_params"])
    assert params["k_max"] == 4 and params["threshold"] == 0.2
    assert 1 <= row["k_mean"] < 4 and row["reference"] and row["kl"] >= 0
    assert row["flops_per_token_routed"] <= row["flops_per_token_analytic"] == moe_flops(4)
    # measured FLOPs follow the experts that really ran (dynamic k), not k_max
    assert row["flops_per_token_measured"] < moe_flops(4)
    # measured on the first batch only: the guard holds it against the analytic count of that batch's routed tokens
    # (like with like), not against the per-token analytic column, which covers both batches
    assert row["flops_measured_tokens"] < row["tokens"] and row["model_flops_exact"] and row["flops_exact"]
    assert row["model_flops_per_token_analytic"] != row["model_flops_per_token_measured"]


def test_dynamic_k_job_measured_on_every_batch_compares_like_with_like(tmp_path):
    run_job(tmp_path, "selector=cumsum", "selector.threshold=0.2", "topk=4", "measure_flops=true", *SMALL)
    row = latest_run(tmp_path)
    assert row["flops_measured_tokens"] == row["tokens"] and row["model_flops_exact"]
    assert row["model_flops_per_token_analytic"] == pytest.approx(row["model_flops_per_token_measured"], rel=1e-12)


def test_decode_phase_and_compiled_job_equal_eager_prefill(tmp_path):
    """decode_tokens=3: greedy static-cache generate after each batch; its steps are the decode phase, generate's
    prompt pass is left out; compile=true gives the eager job's prefill numbers exactly."""
    eager = run_job(tmp_path / "eager", "decode_tokens=3", "device.peak_tflops=2", "device.peak_bandwidth_gbs=10",
                    *SMALL)
    compiled = run_job(tmp_path / "compiled", "decode_tokens=3", "compile=true", *SMALL)
    assert eager["status"] == compiled["status"] == "ok"
    frames = {}
    for name in ("eager", "compiled"):
        row = latest_run(tmp_path / name)
        assert row["decode_tokens"] == 3 and row["decode_steps"] == 2 * 2  # 2 batches x (3 tokens - the first)
        assert row["ttft_ms"] > 0 and row["tpot_ms"] > 0
        # the same figures with the profiler paused, in the same job (the token counts below: none recorded)
        assert row["ttft_paused_ms"] > 0 and row["tpot_paused_ms"] > 0 and row["tokens_per_s_paused"] > 0
        assert row["flops_per_token_measured"] == row["flops_per_token_analytic"] == moe_flops(2)  # prefill only
        layers = table(tmp_path / name, "layers").sort_values(["phase", "layer"]).reset_index(drop=True)
        assert list(layers["phase"]) == ["decode", "decode", "prefill", "prefill"]
        decode, prefill = layers[layers["phase"] == "decode"], layers[layers["phase"] == "prefill"]
        assert (decode["tokens"] == 2 * 8 * 2).all() and (prefill["tokens"] == row["tokens"]).all()  # B=8 rows
        assert (decode["k_mean"] == 2).all() and decode["flops_measured"].isna().all()
        experts = table(tmp_path / name, "experts")
        per_phase = experts.groupby(["phase", "layer"])["tokens"].sum()
        assert (per_phase["decode"] == 2 * 2 * 8 * 2).all() and (per_phase["prefill"] == 2 * row["tokens"]).all()
        frames[name] = (row, layers)
    (eager_row, eager_layers), (compiled_row, compiled_layers) = frames["eager"], frames["compiled"]
    # S-MFU / S-MBU against the peaks given: the analytic whole-forward FLOPs at the prefill rate, the bytes of a
    # decode step (parameters with the expected distinct experts per step, and the static KV cache) at its TPOT
    assert eager_row["s_mfu_prefill"] == pytest.approx(
        eager_row["model_flops_per_token_analytic"] * eager_row["tokens_per_s"] / 2e12)
    assert eager_row["s_mbu_decode"] == pytest.approx(
        eager_row["decode_bytes_per_step"] / (eager_row["tpot_ms"] / 1e3) / 10e9)
    decode_bytes = eager_layers.loc[eager_layers["phase"] == "decode", "param_bytes"]
    assert (decode_bytes > 0).all() and (decode_bytes < E * 3 * H * I * 4).all()  # fewer than all 8 experts a step
    assert pd.isna(compiled_row["s_mfu_prefill"])  # on CPU without a given peak
    # a decode step attends over generate's static cache, max_length - 1 = 64 + 3 - 1 slots, where a prefill token saw
    # 64 keys: 2 layers x 4 heads x (16 + 16) dims x 2 FLOPs per extra key; the rest is the same per token (k=2)
    assert eager_row["model_flops_per_token_decode"] - eager_row["model_flops_per_token_analytic"] == 2 * 2 * 4 * 2 * 32
    # the bytes of that cache: 2 layers x 2 kv heads x (16 + 16) x fp32 per slot
    assert eager_row["kv_cache_bytes_per_token"] == 2 * 2 * 32 * 4
    assert compiled_row["compile"] and not eager_row["compile"]
    assert compiled_row["loss"] == pytest.approx(eager_row["loss"], rel=1e-5)
    for column in ("tokens", "assignments", "flops", "flops_measured"):
        pd.testing.assert_series_equal(compiled_layers[column], eager_layers[column], check_exact=True)
    for column in ("router_entropy", "top1_prob", "load_cv"):
        assert compiled_layers[column].tolist() == pytest.approx(eager_layers[column].tolist(), rel=1e-5), column


def test_quality_always_on_default_routing_is_exact(tmp_path):
    run_job(tmp_path, "quality=always", *SMALL)
    row = latest_run(tmp_path)
    assert row["reference"] and row["kl"] == pytest.approx(0, abs=1e-6) and row["top1_agreement"] == 1.0
    assert row["loss"] == pytest.approx(row["ref_loss"])


def test_meta_weights_give_analytic_numbers_without_a_forward(tmp_path):
    run_job(tmp_path, "model=olmoe", "model.weights=meta", "topk=4")
    row = latest_run(tmp_path)
    assert row["status"] == "ok" and row["weights"] == "meta" and row["tokens"] == 0
    assert row["flops_per_token_analytic"] == 16 * (2 * 2048 * 64 + 4 * 6 * 2048 * 1024)
    assert row["params_total"] == 6_919_161_856 and pd.isna(row["loss"])
    # the whole forward of 8 x 128 tokens, per token: q, k, v, o (2048 x 2048) and the scores over 128 keys of 16
    # heads (128 + 128 dims) in 16 layers, the LM head (2048 x 50304), the MoE layers
    assert row["model_flops_per_token_analytic"] == (16 * 2 * 4 * 2048 * 2048 + 16 * 2 * 16 * 128 * 256
                                                     + 2 * 2048 * 50304 + row["flops_per_token_analytic"])
    assert row["attention_flops_per_token_causal"] == 16 * 2 * 16 * (129 / 2) * 256  # (1 + ... + 128) / 128 keys
    layers = table(tmp_path, "layers")
    assert len(layers) == 16 and (layers["flops_per_token_analytic"] == 2 * 2048 * 64 + 4 * 6 * 2048 * 1024).all()
    assert table(tmp_path, "experts").empty


def test_dimension_overrides_and_fallbacks_carry_provenance(tmp_path):
    # override sits above model.config: the analytic FLOPs follow it, the measured ones follow the real weights
    run_job(tmp_path, "dims.override.expert_dim=16", "dims.fallback.hidden_dim=999", *SMALL)
    layers = table(tmp_path, "layers")
    assert set(layers["expert_dim_source"]) == {"override"} and (layers["expert_dim"] == 16).all()
    # a fallback sits below model.config (and module introspection): the config's hidden size wins
    assert set(layers["hidden_dim_source"]) == {"config"} and (layers["hidden_dim"] == H).all()
    assert layers["hidden_dim_detail"].str.contains("hidden_size").all()
    row = latest_run(tmp_path)
    assert row["flops_per_token_analytic"] == 2 * (2 * H * E + 2 * 6 * H * 16)
    assert row["flops_per_token_measured"] == moe_flops(2)
    assert json.loads(row["dims_override"]) == {"expert_dim": 16}
    assert json.loads(row["dims_fallback"]) == {"hidden_dim": 999}


def test_model_is_reused_between_jobs_and_left_pristine(tmp_path):
    from runner.job.models import clear_cache

    clear_cache()
    first = run_job(tmp_path, "model=qwen2_moe_tiny", "topk=1", *SMALL)
    second = run_job(tmp_path, "model=qwen2_moe_tiny", *SMALL)
    runs = table(tmp_path, "runs").sort_values("timestamp")
    assert first["status"] == second["status"] == "ok"
    assert list(runs["model_reused"]) == [False, True] and runs["model_load_s"].iloc[1] == 0
    # the second job sees the model's own top-k again (the first job's profiler was detached)
    assert runs["topk"].iloc[1] == runs["default_topk"].iloc[1] == 2 and not runs["reference"].iloc[1]
    shared = 6 * H * 48 + 2 * H
    assert list(runs["flops_per_token_analytic"]) == [moe_flops(1, shared=shared), moe_flops(2, shared=shared)]


def test_resume_skips_a_config_with_an_ok_result(tmp_path):
    first = run_job(tmp_path, *SMALL)
    again = run_job(tmp_path, "resume=true", *SMALL)
    assert again["status"] == "skipped" and again["resumed_from"] == first["run_id"]
    other = run_job(tmp_path, "resume=true", "topk=1", *SMALL)
    assert other["status"] == "ok"
    runs = table(tmp_path, "runs")
    assert sorted(runs["status"]) == ["ok", "ok", "skipped"] and runs["run_id"].is_unique


def test_rerunning_a_job_never_overwrites_results(tmp_path):
    # in-process: what keeps parts apart is the run id in the file name, not the process
    for _ in range(2):
        assert run_job(tmp_path, "seq_len=64", "max_batches=1")["status"] == "ok"
    runs = pd.read_parquet(tmp_path / "results" / "table=runs")
    assert len(runs) == 2 and runs["run_id"].is_unique and runs["config_hash"].nunique() == 1
    assert len(list((tmp_path / "results" / "table=runs").rglob("part-*.parquet"))) == 2


# -- pretrained through the real from_pretrained path, hf datasets through the real load_dataset path -------------------
@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from runner.job.tokenizer import byte_tokenizer

    directory = tmp_path_factory.mktemp("tiny-olmoe")
    spec = compose_job(directory, "model=olmoe_tiny").model
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("olmoe", **spec.config))
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def test_pretrained_from_a_local_directory(tmp_path, saved_tiny_model):
    out = run_job(tmp_path, "model=olmoe_tiny", "model.weights=pretrained", f"model.hf_id={saved_tiny_model}",
                  "model.tokenizer=null", "topk=1", *SMALL)
    assert out["status"] == "ok"
    row = latest_run(tmp_path)
    assert row["weights"] == "pretrained" and row["hf_id"] == str(saved_tiny_model)
    assert row["tokenizer"] == str(saved_tiny_model) and row["flops_per_token_analytic"] == moe_flops(1)


def test_missing_pretrained_weights_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as info:
        run_job(tmp_path, "model=olmoe")
    message = str(info.value)
    assert message.startswith("runner: error: ") and "\n" not in message
    assert "allenai/OLMoE-1B-7B-0924" in message and "model.weights=random" in message


def test_missing_local_model_directory(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        run_job(tmp_path, "model.weights=pretrained", f"model.hf_id={tmp_path / 'nope'}")


@pytest.fixture
def jsonl(tmp_path):
    from runner.job.corpus import TEXT

    path = tmp_path / "docs.jsonl"
    docs = [p for p in TEXT.split("\n\n") if p.strip()]
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
    return path


def test_hf_dataset_through_load_dataset_json_builder(tmp_path, jsonl, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    run_job(tmp_path, "dataset=hf", "dataset.path=json", f"dataset.data_files={jsonl}", "dataset.config_name=null",
            "dataset.split=train", "dataset.slice=\"[:6]\"", "dataset.field=body", "dataset.name=jsonl6", *SMALL)
    row = latest_run(tmp_path)
    assert row["status"] == "ok" and row["dataset"] == "jsonl6" and row["documents"] == 6
    assert row["dataset_source"] == f"json:train[:6] {jsonl}"


def test_hf_dataset_from_save_to_disk(tmp_path, jsonl):
    import datasets

    from runner.job.corpus import TEXT

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": [p for p in TEXT.split("\n\n") if p.strip()]}).save_to_disk(str(saved))
    run_job(tmp_path, "dataset=hf", f"dataset.path={saved}", "dataset.config_name=null", "dataset.slice=\"[2:5]\"",
            *SMALL)
    assert latest_run(tmp_path)["documents"] == 3


@pytest.mark.parametrize("name,content,extra", [
    ("docs.txt", "first paragraph of text.\n\nsecond paragraph here.\n" * 40, []),
    ("docs.json", json.dumps([{"text": "a document with words. " * 20}] * 8), []),
])
def test_local_text_and_json_files(tmp_path, name, content, extra):
    path = tmp_path / name
    path.write_text(content)
    run_job(tmp_path, "dataset=local", f"dataset.path={path}", *extra, *SMALL)
    assert latest_run(tmp_path)["status"] == "ok"


def test_local_parquet_with_custom_field(tmp_path):
    import pyarrow as pa

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["some text for the model. " * 30] * 4}), path)
    run_job(tmp_path, "dataset=local", f"dataset.path={path}", "dataset.field=content", *SMALL)
    assert latest_run(tmp_path)["documents"] == 4


def test_fixture_files_in_tests_data(tmp_path):
    run_job(tmp_path, "dataset=local", f"dataset.path={DATA / 'tiny.jsonl'}", *SMALL)
    assert latest_run(tmp_path)["status"] == "ok"


def test_target_k_calibrates_on_held_out_batches_and_evaluates_the_rest(tmp_path):
    """selector.target_k: the threshold bisected on the first 2 batches (blocks 0-3), the evaluation on the next 2;
    the static top-k (router) with the same batches held out evaluates the same blocks."""
    run_job(tmp_path, "selector=cumsum", "selector.target_k=1.5", "topk=4", "batch_size=2", *SMALL)
    row = latest_run(tmp_path)
    assert row["target_k"] == 1.5 and row["calibration_batches"] == 2 and row["calibrated_param"] == "threshold"
    assert row["calibration_slice"].startswith("blocks 0-3 of ") and row["blocks"] == 4  # max_batches after them
    assert abs(row["calibration_k_mean"] - 1.5) <= 0.02  # 128 tokens a layer on the calibration batches
    assert abs(row["k_mean"] - 1.5) <= 0.25  # other blocks: near the target
    assert json.loads(row["selector_params"])["threshold"] == row["calibrated_value"]
    run_job(tmp_path, "selector=router", "selector.target_k=3", "selector.calibration_batches=2", "batch_size=2",
            *SMALL)
    static = latest_run(tmp_path)
    assert static["topk"] == 3 and static["k_mean"] == 3 and pd.isna(static["calibrated_value"])
    assert static["blocks"] == 4 and static["calibration_slice"] == row["calibration_slice"]
    assert static["tokens"] == row["tokens"]


def test_layer_k_target_splits_the_budget_over_the_layers(tmp_path):
    run_job(tmp_path, "selector=layer_k", "selector.target_k=1.5", "topk=2", "batch_size=2", *SMALL)
    row = latest_run(tmp_path)
    ks = json.loads(row["selector_params"])["ks"]
    assert sorted(ks) == [1, 2] and row["k_mean"] == 1.5 == row["calibration_k_mean"]
    assert row["calibrated_param"] == "ks" and row["flops_per_token_measured"] == row["flops_per_token_routed"]
    layers = table(tmp_path, "layers").query("phase == 'prefill'").sort_values("position")
    assert layers["k_mean"].tolist() == ks


@pytest.mark.parametrize("override, message", [
    (("selector=kneedle", "selector.target_k=2"), "selector 'kneedle' has no parameter to calibrate"),
    (("selector=router", "selector.target_k=1.5"), "target_k must be a whole k"),
    (("selector=cumsum", "selector.target_k=0"), "must be a positive mean k"),
    (("selector=cumsum", "analysis.ablation=true"), "expert ablation runs the model's own routing"),
    (("selector=cumsum", "selector.target_k=2", "max_batches=null", "dataset.slice='[:1]'", "seq_len=64",
      "selector.calibration_batches=50"), "leaves no batch to evaluate"),
])
def test_target_k_refusals_are_one_line(tmp_path, override, message):
    with pytest.raises(SystemExit, match=message):
        run_job(tmp_path, *override)
