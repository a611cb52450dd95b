"""Vocabulary specialization (opt-in, analyses=("vocab",)): the definition and the recorder's table by hand, a tiny real
model against a per-token recount (positional and keyword ids, generate's decode steps, inputs_embeds), and fixed
memory of every analysis after 1k and after 100k tokens; group-limited routing (deepseek_v3). Eager == torch.compile:
tests/unit/test_compile.py."""
import math

import numpy as np
import pytest
import torch

from runner import ProfilerError
from runner.profiler import Analyses, vocab
from runner.profiler.metrics import vocab_columns, vocab_specialization
from runner.profiler.accumulators import RoutingRecorder
from helpers.tiny_configs import build_tiny_model
from helpers.profiling import quiet_profiler as profile


def test_vocab_specialization_by_hand():
    counts = np.zeros((10, 4), np.int32)
    counts[3] = [1, 3, 1, 0]  # id 3: 5 times, 3 of them on expert 1: 3/5
    counts[7] = [0, 0, 6, 0]  # id 7: 6 times, all on expert 2: 1
    counts[9] = [2, 0, 0, 0]  # id 9: twice, below min_token_count 5: left out
    assert vocab_specialization(counts, 5) == (pytest.approx((3 / 5 + 1) / 2), 2)
    assert vocab_specialization(counts, 1) == (pytest.approx((3 / 5 + 1 + 1) / 3), 3)
    value, ids = vocab_specialization(counts, 7)
    assert math.isnan(value) and ids == 0


def test_analyses_names_and_min_token_count():
    assert Analyses.of("vocab") == Analyses(capacity_factors=(), vocab=True) and Analyses().vocab is False
    assert Analyses().min_token_count == 5
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="min_token_count"):
            Analyses(vocab=True, min_token_count=bad)


def logits_of(*rows):
    return torch.log(torch.tensor(rows, dtype=torch.float32))


def test_recorder_table_by_hand():
    rec = RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", capacity=2, vocab_size=10,
                          analyses=("vocab",))
    vocab.capture(rec.groups, torch.tensor([[3, 3], [7, 12]]))
    logits = logits_of([0.1, 0.5, 0.3, 0.1],  # id 3, S = {2, 1}: top-1 expert 1 (the higher p, not the first slot)
                       [0.4, 0.3, 0.2, 0.1],  # id 3, S = {0} (one slot dropped, sentinel 4): expert 0
                       [0.4, 0.3, 0.2, 0.1],  # id 7, both slots dropped: no top-1 expert, not counted
                       [0.4, 0.3, 0.2, 0.1])  # id 12 >= vocab_size 10: not counted
    rec.record(0, logits, torch.tensor([[2, 1], [0, 4], [4, 4], [1, 2]]), torch.ones(4, 2))
    rec.record(0, logits[:3], torch.tensor([[0, 1]] * 3), torch.ones(3, 2))  # 3 tokens, 4 ids captured: not paired
    vocab.capture(rec.groups, None)  # e.g. an inputs_embeds forward: nothing to pair
    rec.record(0, logits, torch.tensor([[0, 1]] * 4), torch.ones(4, 2))
    rec.set_phase("decode")
    vocab.capture(rec.groups, torch.tensor([[3]]))
    rec.record(0, logits[:1], torch.tensor([[2, 1]]), torch.ones(1, 2))
    rec.set_phase("score")  # a new phase reallocates: what was recorded is carried over
    phases = rec.read_phases()
    table = phases["prefill"]["vocab"][0]
    assert table.dtype == np.int32 and table.shape == (10, 4)
    assert {tuple(cell): int(table[tuple(cell)]) for cell in np.argwhere(table)} == {(3, 0): 1, (3, 1): 1}
    assert {tuple(cell) for cell in np.argwhere(phases["decode"]["vocab"][0])} == {(3, 1)}
    assert not phases["score"]["vocab"].any()
    assert phases["prefill"]["k_hist"][0].sum() == 11  # the other metrics saw every token
    assert vocab_columns(phases["prefill"], 0, 4, 1) == dict(vocab_specialization=0.5, vocab_ids=1, vocab_tokens=2)
    assert vocab_columns(rec.snapshot(), 0, 4, 3) == dict(vocab_specialization=pytest.approx(2 / 3), vocab_ids=1,
                                                          vocab_tokens=3)
    rec.reset()
    assert not rec.snapshot()["vocab"].any()


def test_tiny_model_table_equals_a_per_token_recount():
    """Recount from the routers' own logits (top-1 = argmax, as OLMoE's analysis script) paired with the top model's
    input ids, per phase: a forward with keyword ids, one with positional ids, generate (its prefill, then decode steps
    of `batch` tokens each), and an inputs_embeds forward that pairs nothing."""
    model = build_tiny_model("olmoe", num_hidden_layers=2)
    V, E = model.config.vocab_size, model.config.num_experts
    p = profile(model, analyses=("vocab",))
    expected = {phase: np.zeros((2, V, E), np.int64) for phase in ("prefill", "decode")}
    forward: dict = {}

    def ids_hook(module, args, kwargs):
        forward["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def router_hook(position):
        def hook(module, args, output):
            logits = next(t for t in output if t.is_floating_point() and t.shape[-1] == E)
            if forward["ids"] is not None:
                np.add.at(expected[p.current_phase][position], (forward["ids"].flatten().numpy(),
                                                                logits.argmax(-1).numpy()), 1)
        return hook

    handles = [model.register_forward_pre_hook(ids_hook, with_kwargs=True)]
    handles += [layer.router.register_forward_hook(router_hook(layer.position)) for layer in p.layers]
    x = torch.randint(2, 6, (2, 12), generator=torch.Generator().manual_seed(0))  # 4 ids: each seen often
    with torch.no_grad():
        model(input_ids=x)
        model(x[:1])
        model(inputs_embeds=model.get_input_embeddings()(x))
        with p.phase("decode"):
            model.generate(x, max_new_tokens=3, do_sample=False, pad_token_id=0)
    for handle in handles:
        handle.remove()
    phases = p.recorder.read_phases()
    for phase, counts in expected.items():
        np.testing.assert_array_equal(phases[phase]["vocab"][:, :, :E], counts, err_msg=phase)
    df = p.layers_df().set_index(["phase", "layer"])
    assert df.loc["prefill", "tokens"].tolist() == [60, 60] and df.loc["prefill", "vocab_tokens"].tolist() == [36, 36]
    assert df.loc["decode", "tokens"].tolist() == df.loc["decode", "vocab_tokens"].tolist() == [24 + 2 * 2] * 2
    for (phase, layer), row in df.iterrows():
        value, ids = vocab_specialization(expected[phase][layer], 5)
        assert ids > 0 and row["vocab_ids"] == ids and row["vocab_specialization"] == pytest.approx(value)
        assert 0.25 <= value <= 1  # at least 1/E


def test_vocab_needs_the_configs_vocab_size():
    model = build_tiny_model("olmoe", num_hidden_layers=1)
    model.config.vocab_size = 0
    with pytest.raises(ProfilerError, match="has no vocab_size"):
        profile(model, analyses=("vocab",))
    assert "vocab_specialization" not in profile(model).layers_df()  # off by default: no column, nothing allocated


def test_memory_is_fixed_after_1k_and_100k_tokens():
    """Every analysis on (capacity, co-activation, transitions, vocab): the recorder's device bytes after one call of
    1024 tokens equal those after 98 (100,352 tokens). Calls of one size: the kept selection (transitions) and the
    captured ids are sized by the largest call, not by the tokens seen."""
    model = build_tiny_model("olmoe", num_hidden_layers=2)
    p = profile(model, analyses=Analyses.of(("capacity", "coactivation", "transitions", "vocab")))
    x = torch.randint(0, 128, (16, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(input_ids=x)
        after_1k = p.recorder.buffer_bytes
        for _ in range(97):
            model(input_ids=x)
    assert p.recorder.tokens == [100_352, 100_352]
    assert p.recorder.buffer_bytes == after_1k
    group = p.recorder.groups[0]
    assert group.vocab.numel() * group.vocab.element_size() == 2 * 2 * 128 * 8 * 4  # L * P * V * E * int32
    assert p.layers_df()["vocab_tokens"].tolist() == [100_352, 100_352]


def test_top1_is_the_best_selected_expert_under_group_limited_routing():
    """deepseek_v3 routes within the best groups (n_group 4, topk_group 2, by each group's top-2 score sum), so a
    token's argmax expert can be left out: the table counts the selected expert of highest score, not the argmax."""
    model = build_tiny_model("deepseek_v3", num_hidden_layers=2)
    E = model.config.n_routed_experts
    p = profile(model, analyses=("vocab",))
    seen = []
    p.layers[0].router.register_forward_hook(lambda module, args, output: seen.append(output))
    x = torch.randint(2, 128, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(input_ids=x)
    (output,) = seen
    logits = next(t for t in output if t.is_floating_point() and t.shape[-1] == E).reshape(-1, E)
    index = next(t for t in output if not t.is_floating_point())
    best_selected = index.gather(-1, logits.gather(-1, index).argmax(-1, keepdim=True))[:, 0]
    assert (best_selected != logits.argmax(-1)).any()  # the argmax was left out for some token
    expected = np.zeros((model.config.vocab_size, E), np.int64)
    np.add.at(expected, (x.flatten().numpy(), best_selected.numpy()), 1)
    np.testing.assert_array_equal(p.recorder.snapshot()["vocab"][0][:, :E], expected)
