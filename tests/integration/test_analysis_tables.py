"""The routing-analysis tables of a job (analysis=full, trace=true), checked against the job's other tables and
against counts done by hand from the trace: coactivation, transitions, placement (and placement_from), trace, and the
runs columns that sum them up."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.docs import doc_blocks
from helpers.jobs import run_job, table
from runner.job import data
from runner.profiler import placement
from runner.config.schema import DatasetConfig, DatasetKind
from runner.job.tokenizer import byte_tokenizer
from runner.cli.preflight import expand_shorthands

SEQ, BATCH, BATCHES, DECODE = 32, 4, 2, 3
JOB = ("analysis=full", "trace.enabled=true", f"seq_len={SEQ}", f"batch_size={BATCH}",
       f"max_batches={BATCHES}", f"decode_tokens={DECODE}")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    corpus = out / "docs.jsonl"  # documents of 20-60 bytes: every block spans several
    corpus.write_text("".join(f'{{"text": "document {i}: {"abc " * (i % 10 + 3)}"}}\n' for i in range(200)))
    run_job(out, *JOB, "dataset=local", f"dataset.path={corpus}")
    return out, {name: table(out, name) for name in ("runs", "layers", "experts", "coactivation", "transitions",
                                                     "placement", "trace")}


def selections(trace: pd.DataFrame, phase: str, layer: int) -> list[set[int]]:
    rows = trace[(trace["phase"] == phase) & (trace["layer"] == layer)].sort_values(["batch", "position", "row"])
    return [set(map(int, e)) for e in rows["experts"]]


def test_trace_has_a_row_per_token_and_layer_and_its_counts_equal_experts(tables):
    _, t = tables
    trace, experts = t["trace"], t["experts"]
    layers = sorted(experts["layer"].unique())
    prefill = trace[trace["phase"] == "prefill"]
    decode = trace[trace["phase"] == "decode"]
    assert len(prefill) == len(layers) * BATCHES * BATCH * SEQ
    assert len(decode) == len(layers) * BATCHES * BATCH * (DECODE - 1)  # the first new token comes from the prompt pass
    assert t["runs"]["trace_rows"].iloc[0] == len(trace) and t["runs"]["trace_tokens_skipped"].iloc[0] == 0
    for (phase, layer), group in trace.groupby(["phase", "layer"]):
        counts = np.bincount(np.concatenate(group["experts"].to_numpy()), minlength=8)
        expected = experts[(experts["phase"] == phase) & (experts["layer"] == layer)].sort_values("expert")
        assert counts.tolist() == expected["tokens"].tolist(), (phase, layer)
    assert (trace["k"] == trace["experts"].map(len)).all() and (trace["k"] == 2).all()
    assert (trace["experts"].map(len) == trace["expert_weights"].map(len)).all()


def test_trace_token_ids_positions_and_documents_are_the_blocks(tables):
    out, t = tables
    trace = t["trace"]
    tokenizer = byte_tokenizer()
    blocks = data.tokenize(data.load_documents(DatasetConfig(kind=DatasetKind.local, path=str(out / "docs.jsonl"))), tokenizer,
                           SEQ, "docs", max_tokens=SEQ * BATCH * BATCHES)
    first = trace[(trace["phase"] == "prefill") & (trace["layer"] == trace["layer"].min())]
    block = first["batch"] * BATCH + first["row"]
    assert (first["token_id"].to_numpy() == blocks.ids.numpy()[block, first["position"]]).all()
    ordered = first.sort_values(["batch", "row", "position"])
    # every document starts with bos: a token's document is the number of bos tokens up to it, minus one
    by_bos = np.cumsum(ordered["token_id"].to_numpy() == tokenizer.bos_token_id) - 1
    assert ordered["document"].tolist() == by_bos.tolist() and by_bos[-1] >= 5
    decode = trace[trace["phase"] == "decode"]
    assert sorted(decode["position"].unique()) == list(range(SEQ, SEQ + DECODE - 1))
    assert decode["document"].isna().all()


def test_coactivation_counts_every_pair_of_each_tokens_set(tables):
    _, t = tables
    co, trace = t["coactivation"], t["trace"]
    for (phase, layer), group in co.groupby(["phase", "layer"]):
        by_hand: dict[tuple[int, int], int] = {}
        for chosen in selections(trace, phase, layer):
            for a in chosen:
                for b in chosen - {a}:
                    by_hand[a, b] = by_hand.get((a, b), 0) + 1
        assert dict(zip(zip(group["expert_a"], group["expert_b"]), group["count"])) == by_hand
        # fixed k = 2, no drops: sum_b C[a, b] = (k - 1) c_a
        c = t["experts"].query("phase == @phase and layer == @layer").set_index("expert")["tokens"]
        sums = group.groupby("expert_a")["count"].sum()
        assert all(sums[a] == (2 - 1) * c[a] for a in sums.index)


def test_transitions_and_jaccard_follow_each_token_to_the_next_layer(tables):
    _, t = tables
    tr, trace, layers = t["transitions"], t["trace"], t["layers"]
    before, after = selections(trace, "prefill", 0), selections(trace, "prefill", 1)
    by_hand: dict[tuple[int, int], int] = {}
    for s0, s1 in zip(before, after):
        for a in s0:
            for b in s1:
                by_hand[a, b] = by_hand.get((a, b), 0) + 1
    got = tr.query("phase == 'prefill' and layer == 0")
    assert set(got["next_layer"]) == {1}
    assert dict(zip(zip(got["expert_a"], got["expert_b"]), got["count"])) == by_hand
    jaccard = np.mean([len(s0 & s1) / len(s0 | s1) for s0, s1 in zip(before, after)])
    row = layers.query("phase == 'prefill' and layer == 0").iloc[0]
    assert row["jaccard_next"] == pytest.approx(jaccard, rel=1e-6)  # float32 per token on the device
    assert t["runs"]["jaccard_mean"].iloc[0] == pytest.approx(jaccard, rel=1e-6)  # one pair of layers


def test_vocab_specialization_recounted_from_the_trace(tables):
    _, t = tables
    trace, layers = t["trace"], t["layers"]
    for layer in (0, 1):
        rows = trace.query("phase == 'prefill' and layer == @layer")
        top1 = rows["experts"].map(lambda e: int(e[0]))  # the router's order: the most probable selected first
        counts = pd.crosstab(rows["token_id"], top1)
        frequent = counts[counts.sum(1) >= 5]  # analysis.min_token_count
        expected = (frequent.max(1) / frequent.sum(1)).mean()
        row = layers.query("phase == 'prefill' and layer == @layer").iloc[0]
        assert row["vocab_ids"] == len(frequent) > 0 and row["vocab_tokens"] == len(rows)
        assert row["vocab_specialization"] == pytest.approx(expected, rel=1e-12)


def test_placement_rows_and_the_runs_summary_columns(tables):
    _, t = tables
    placed, runs, layers = t["placement"], t["runs"].iloc[0], t["layers"]
    assert set(placed["ep_size"]) == {2, 4, 8} and (placed["fitted_on"] == "self").all()
    assert set(placed["placement"]) == {"contiguous", "round_robin", "balanced", "balanced+r2", "balanced+r4",
                                        "balanced+r8"}
    assert (placed["imbalance"] >= 1 - 1e-12).all()
    prefill = layers[layers["phase"] == "prefill"]
    assert runs["analysis"] == "full" and runs["ep_size_max"] == 8
    assert runs["drop_rate_cf1_25"] == pytest.approx(prefill["drop_rate_cf1_25"].mean())
    assert runs["jaccard_random_mean"] == pytest.approx(prefill["jaccard_random"].dropna().mean())
    assert runs["load_cv_p50"] == pytest.approx(np.median(prefill["load_cv"]))
    assert runs["load_jain_p05"] == pytest.approx(np.percentile(prefill["load_jain"], 5))
    balanced = placed.query("phase == 'prefill' and placement == 'balanced' and ep_size == 8")
    assert runs["ep_imbalance_balanced"] == pytest.approx(balanced["imbalance"].mean())


def test_placement_from_fits_on_another_runs_loads_and_scores_on_this_ones(tables, tmp_path):
    out, t = tables
    source = t["runs"]["run_id"].iloc[0]
    run_job(out, "analysis.placement=true", "analysis.ep_sizes=[4]", "analysis.redundant_experts=[1]",
            f"analysis.placement_from={source}", "seed=1", "dataset.slice='[5:]'", f"seq_len={SEQ}",
            f"batch_size={BATCH}", "max_batches=1")
    runs = table(out, "runs").sort_values("timestamp")
    this = runs["run_id"].iloc[-1]
    placed = table(out, "placement").query("run_id == @this and phase == 'prefill'")
    assert set(placed["fitted_on"]) == {"self", source}
    assert set(placed.query("fitted_on == @source")["placement"]) == {"balanced", "balanced+r1"}
    experts = table(out, "experts")
    for layer in placed["layer"].unique():
        fitted = experts.query("run_id == @source and phase == 'prefill' and layer == @layer").sort_values("expert")
        scored = experts.query("run_id == @this and phase == 'prefill' and layer == @layer").sort_values("expert")
        expected = placement.balanced(fitted["tokens"].to_numpy(float), 4)
        row = placed.query("fitted_on == @source and placement == 'balanced' and layer == @layer").iloc[0]
        assert [list(r) for r in row["expert_ranks"]] == [list(r) for r in expected.expert_ranks]
        assert row["imbalance"] == pytest.approx(expected.score(scored["tokens"].to_numpy(float))["imbalance"])
    with pytest.raises(SystemExit, match="analysis.placement_from=nowhere: no sweep or run 'nowhere'"):
        run_job(tmp_path, "analysis.placement=true", "analysis.placement_from=nowhere", "max_batches=1",
                f"results_dir={out / 'results'}")


def test_the_documented_duckdb_query_reads_the_trace(tables, monkeypatch):
    duckdb = pytest.importorskip("duckdb", exc_type=ModuleNotFoundError,
                                 reason="duckdb (pyproject's test extra) is not installed")
    out, t = tables
    (sql,) = [code for name, heading, code in doc_blocks("sql") if heading == "trace"]
    monkeypatch.chdir(out.parent)
    (out.parent / "outputs").symlink_to(out, target_is_directory=True)
    got = duckdb.sql(sql.replace("layer = 3", "layer = 1")).df()
    trace = t["trace"].query("layer == 1 and phase == 'prefill'")
    expected = trace.explode("experts").groupby(["token_id", "experts"]).size()
    assert len(got) == min(20, len(expected)) and got["n"].iloc[0] == expected.max()


def test_trace_max_tokens_bounds_the_rows_and_counts_the_rest(tmp_path):
    run_job(tmp_path, "trace.enabled=true", "trace.max_tokens=100", f"seq_len={SEQ}", f"batch_size={BATCH}",
            "max_batches=2", "analysis=none")
    trace, runs = table(tmp_path, "trace"), table(tmp_path, "runs").iloc[0]
    assert trace.groupby("layer").size().tolist() == [100, 100]
    assert runs["trace_tokens_skipped"] == 2 * BATCH * SEQ - 100
    assert runs["analysis"] == "none" and pd.isna(runs["drop_rate_cf1_25"])
    assert table(tmp_path, "layers")["drop_rate_cf1_0"].isna().all()


def test_trace_logits_adds_the_router_distribution(tmp_path):
    run_job(tmp_path, "trace.enabled=true", "trace.logits=true", f"seq_len={SEQ}", "batch_size=1", "max_batches=1")
    trace = table(tmp_path, "trace")
    probs = np.stack(trace["router_probs"].to_numpy())
    assert probs.shape == (2 * SEQ, 8)
    assert np.allclose(probs.sum(1), 1, atol=1e-2)  # softmax scores, float16
    top = np.argsort(-probs, axis=1)[:, :2]
    chosen = np.stack(trace["experts"].to_numpy())
    assert (np.sort(top, 1) == np.sort(chosen, 1)).mean() > 0.95  # float16 ties aside, the top-2 are the experts


def test_trace_true_is_short_for_trace_enabled():
    assert expand_shorthands(["trace=true", "trace.logits=true", "topk=2"]) == \
        ["trace.enabled=true", "trace.logits=true", "topk=2"]
    assert expand_shorthands(["trace=true,false", "-m"]) == ["trace.enabled=true,false", "-m"]


@pytest.mark.parametrize("override, message", [
    ("analysis.capacity_factors=[3.0]", "analysis.capacity_factors: 3.0 has no drop-rate column"),
    ("analysis.placement_from=x", "analysis.placement_from: scores placements, so it needs analysis.placement=true"),
    ("trace.logits=true", "trace.logits: adds to the trace, so it needs trace=true"),
    ("trace.max_tokens=0", "trace.max_tokens: must be >= 1"),
    ("analysis.ep_sizes=[0]", "analysis.ep_sizes: must be integers >= 1"),
])
def test_analysis_config_errors_are_one_line(tmp_path, override, message):
    with pytest.raises(SystemExit, match=message.replace(".", r"\.").replace("[", r"\[")):
        run_job(tmp_path, override)


def test_ablation_table_has_a_row_per_layer_and_expert(tmp_path):
    run_job(tmp_path, "analysis.ablation=true", "seq_len=32", "batch_size=2", "max_batches=2")
    ablation, runs = table(tmp_path, "ablation"), table(tmp_path, "runs").iloc[0]
    assert sorted(zip(ablation["layer"], ablation["expert"])) == [(l, e) for l in (0, 1) for e in range(8)]
    assert (ablation["targets"] == 2 * 31).all() and (ablation["kl"] >= 0).all()  # one batch of 2 blocks
    assert (ablation["run_id"] == runs["run_id"]).all()
    np.testing.assert_allclose(ablation["loss"] - ablation["delta_loss"], ablation["loss"].iloc[0]
                               - ablation["delta_loss"].iloc[0])  # one own-routing loss for every row
