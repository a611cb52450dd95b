"""Whole-model cost: the analytic FLOPs of the whole forward equal FlopCounterMode's count over the whole forward for
the tiny model of every supported architecture (eager and SDPA attention), or the architecture says why not; the
causal variant and the parameter conventions by hand."""
import inspect
import warnings

import pytest
import torch

from handlers.forward import NOT_EXACT
from helpers.counting import count_forward
from helpers.tiny_configs import available_model_types, build_tiny_model, older_release
from runner import MOEProfiler
from runner.profiler.cost_model import causal_pairs

BATCH, SEQ = 2, 12


def whole_forward(model, attention: str):
    """(cost, analytic, measured) FLOPs per token of one forward under `attention`, or None where the model refuses it."""
    counted = count_forward(model, attention, BATCH, SEQ)
    return None if counted is None else (counted.cost, counted.analytic, counted.measured)


@pytest.mark.parametrize("model_type", available_model_types())
def test_whole_model_analytic_flops_equal_measured(model_type):
    if model_type in ("doge", "longcat_flash") and older_release(model_type):
        pytest.skip(older_release(model_type))
    model = build_tiny_model(model_type)
    ran = 0
    for attention in ("eager", "sdpa"):
        result = None if model_type == "doge" else whole_forward(model, attention)  # doge: no routed count
        if result is None:
            continue
        ran += 1
        cost, analytic, measured = result
        if cost.exact:
            assert analytic == measured, (attention, analytic, measured)
        else:
            assert cost.note and analytic != measured, (attention, cost.note)
    assert ran or model_type == "doge"
    if model_type == "doge":
        assert "doge" in NOT_EXACT


def test_causal_variant_by_hand():
    assert causal_pairs(4, 4) == 10  # 1 + 2 + 3 + 4
    assert causal_pairs(1, 9) == 9  # one decode query sees every cached key
    assert causal_pairs(2, 5) == 4 + 5


def test_parameter_conventions_on_a_tiny_olmoe():
    model = build_tiny_model("olmoe")
    profiler = MOEProfiler(model, verbose=False)
    counts = profiler.param_counts()
    embedding = model.get_input_embeddings().weight.numel()  # 128 x 64, untied from the LM head
    assert embedding == 128 * 64
    assert counts["params_active"] - counts["params_active_nonembedding"] == embedding
    cost = profiler.forward_cost()
    # OLMoE tiny: q, k, v, o are 64x64, 64x32, 64x32, 64x64 per layer (GQA 4/2 heads of 16), 4 layers; head 64x128
    assert cost.dense_per_token == 4 * 2 * (64 * 64 * 2 + 64 * 32 * 2)
    assert cost.head_per_position == 2 * 64 * 128
    assert cost.attention_flops(1, 3) == 4 * 2 * 4 * 9 * 32
    assert cost.attention_flops(1, 3, causal=True) == 4 * 2 * 4 * 6 * 32
    assert cost.kv_bytes_per_token(100, 4) == 4 * 2 * 32 * 4  # 4 layers x 2 kv heads x (16 + 16) x fp32


def test_device_peaks_from_the_table_or_the_config():
    from runner.profiler.cost_hardware import peak_for

    assert peak_for("NVIDIA H100 80GB HBM3") == (989.5, 3350.0)  # torch's name of the SXM card
    assert peak_for("NVIDIA H100 PCIe") == (756.5, 2000.0)
    assert peak_for("NVIDIA H200") == (989.5, 4800.0)
    assert peak_for("NVIDIA H200 NVL") == (835.5, 4800.0)  # its own, lower clock: not the SXM card's
    assert peak_for("NVIDIA H100 80GB HBM3", tflops=700.0) == (700.0, 3350.0)  # a given value wins
    assert peak_for("cpu (x86_64, 2 cores)", cuda=False) == (None, None)  # never guessed
    assert peak_for("Some Future GPU") == (None, None)


# -- decode: one real cached step, and the real cache it leaves ------------------------------------------------------
CACHED = ("keys", "values", "indexer_keys")  # what a cache layer holds per token (conv / recurrent states are fixed-size)


def cache_bytes(cache) -> int:
    """Bytes of the real cache's per-token tensors: K and V (MLA: the latent and rotary key), indexer keys."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for name in CACHED
               if isinstance(t := getattr(layer, name, None), torch.Tensor))


def decode_step(model, slots: int | None):
    """(forward cost, analytic and measured FLOPs per token of one cached decode step, analytic - measured outside the
    MoE layers, the real cache's bytes after it, analytic bytes) after a SEQ-token prompt; slots: a static cache of
    that many slots, None: the dynamic one."""
    from transformers import StaticCache

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False)
    prompt = torch.randint(2, 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    step = torch.randint(2, 100, (BATCH, 1), generator=torch.Generator().manual_seed(1))
    # the cache's keyword: `past_key_values`, or `cache` where a model takes that name (ergo; transformers >= 5.25)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    static = {key: StaticCache(config=model.config, max_cache_len=slots)} if slots else {}
    try:
        with torch.no_grad():
            cache = model(input_ids=prompt, use_cache=True, **static).past_key_values
            with profiler.phase("decode"), profiler.measure_flops():
                model(input_ids=step, use_cache=True, **{key: cache},
                      **(dict(cache_position=torch.tensor([SEQ])) if slots else {}))
        layers = profiler.layers_df().query("phase == 'decode'")
        routed, moe_measured = (float(layers[column].sum()) / BATCH for column in ("flops", "flops_measured"))
        cost = profiler.forward_cost()
        measured = profiler.model_flops_measured()["decode"] / BATCH
        return (cost, cost.decode_per_token(BATCH, SEQ + 1, slots, moe_per_token=routed), measured,
                cost.decode_per_token(BATCH, SEQ + 1, slots) - (measured - moe_measured), cache_bytes(cache),
                cost.kv_cache_bytes(BATCH, SEQ + 1, 4, slots))
    finally:
        profiler.detach()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("model_type", available_model_types())
def test_decode_step_flops_and_kv_bytes_equal_the_real_cache(model_type, cache):
    """A cached decode step: the analytic count equals FlopCounterMode's (MLA re-expands its latent at every cached
    position, sliding layers attend over their window, a conv convolves its state), and the analytic KV bytes equal
    the real cache tensors' after the step, dynamic and static (generate's), for every architecture called exact."""
    if model_type == "doge" or older_release(model_type):
        pytest.skip("doge: no routed count" if model_type == "doge" else older_release(model_type))
    model = build_tiny_model(model_type)
    model.set_attn_implementation("eager")
    try:
        cost, analytic, measured, outside_moe, real, kv = decode_step(model, SEQ + 3 if cache == "static" else None)
    except (ValueError, KeyError) as exc:  # its own cache class (minimax) or layer kinds StaticCache lacks (deepseek_v4)
        assert cache == "static" and model_type in NOT_EXACT, exc
        return
    if cost.exact:
        assert outside_moe == 0, outside_moe  # attention, MLA, convolutions, head: the decode-specific terms
        assert analytic == measured, (analytic, measured)  # and the MoE layers at their routed count
        assert kv == real, (kv, real)
    else:
        assert cost.note


def test_mla_decode_by_hand():
    """DeepSeek-V3 tiny (4 heads, kv_lora_rank 16, rope 8, nope 8, v 16): the cache holds the latent, 16 + 8 = 24
    values per token per layer, and each step re-runs kv_b_proj (16 -> 4 x (8 + 16)) over every cached position."""
    cost = MOEProfiler(build_tiny_model("deepseek_v3"), verbose=False).forward_cost()
    assert {(a.latent, a.expand) for a in cost.attention} == {(16 + 8, 2 * 16 * 4 * (8 + 16))}
    assert cost.kv_bytes_per_token(17, 4) == 4 * 24 * 4  # 4 layers x 24 x fp32
    step = cost.decode_flops(1, 17) - cost.decode_flops(1, 16)  # one more cached position
    assert step == 4 * (2 * 4 * (16 + 16) + 2 * 16 * 4 * 24)  # QK^T + PV over one key, its re-expansion, 4 layers


def test_generate_static_cache_has_max_length_minus_one_slots():
    """The static cache generate() allocates is checked on the real cache, not by arithmetic: seq_len + decode_tokens
    - 1 slots, and the runs columns' KV bytes are its bytes."""
    from runner.profiler.cost_run import cost_columns

    model = build_tiny_model("olmoe")
    profiler = MOEProfiler(model, verbose=False)
    prompt = torch.randint(2, 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    new = 4
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, cache_implementation="static", pad_token_id=0,
                             return_dict_in_generate=True)
    slots = {layer.keys.shape[-2] for layer in out.past_key_values.layers}
    assert slots == {SEQ + new - 1}
    row, _ = cost_columns(profiler, None, None, batch=BATCH, seq_len=SEQ, decode_tokens=new)
    assert row["kv_cache_bytes_per_token"] * BATCH * (SEQ + new - 1) == cache_bytes(out.past_key_values)
    profiler.detach()


def test_meta_job_bytes_are_the_checkpoints_dtype():
    """weights=meta builds in the checkpoint's own dtype (`torch_dtype` in model.config), so its bytes per token are
    the checkpoint's; a dtype torch does not know is one clear ConfigError."""
    from runner.job import models
    from runner.errors import ConfigError
    from runner.profiler.cost_run import cost_columns
    from runner.config.schema import DeviceConfig, ModelConfig, Weights

    config = dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=8, num_experts_per_tok=2)
    by_dtype = {}
    for declared in (None, "bfloat16"):
        cfg = ModelConfig(name="meta_olmoe", model_type="olmoe", weights=Weights.meta,
                          config={**config, **({"torch_dtype": declared} if declared else {})})
        models.clear_cache()
        loaded = models.load(cfg, DeviceConfig(), 0)  # device.dtype: float32
        profiler = MOEProfiler(loaded.model, verbose=False)
        row, _ = cost_columns(profiler, None, None, batch=1, seq_len=32)
        by_dtype[loaded.dtype] = row["kv_cache_bytes_per_token"]
        profiler.detach()
    assert by_dtype == {"float32": 2 * 2 * 32 * 4, "bfloat16": 2 * 2 * 32 * 2}  # 2 layers x 2 kv heads x (16 + 16)
    with pytest.raises(ConfigError, match="torch_dtype"):
        models.load(ModelConfig(name="meta_olmoe", model_type="olmoe", weights=Weights.meta,
                                config={**config, "torch_dtype": "fp7"}), DeviceConfig(), 0)
    models.clear_cache()


def test_utilisation_divides_by_every_gpu_the_model_occupies():
    """S-MFU / S-MBU over the peak of all the cards (MoE-CAP's num_gpus x peak): a model spread over 4 GPUs at the
    same rate uses a quarter of them."""
    from runner.profiler.cost_run import cost_columns

    profiler = MOEProfiler(build_tiny_model("olmoe"), verbose=False)
    rows = [cost_columns(profiler, None, None, batch=1, seq_len=SEQ, decode_tokens=4, tokens_per_s=1e6, tpot_ms=1.0,
                         peak_tflops=1.0, peak_bandwidth_gbs=1.0, gpus=gpus)[0] for gpus in (1, 4)]
    one, four = rows
    assert one["s_mfu_prefill"] == pytest.approx(one["model_flops_per_token_analytic"] * 1e6 / 1e12)
    assert four["s_mfu_prefill"] == pytest.approx(one["s_mfu_prefill"] / 4)
    assert four["s_mbu_decode"] == pytest.approx(one["s_mbu_decode"] / 4)
    assert four["peak_tflops"] == one["peak_tflops"] == 1.0  # the column stays one card's
    profiler.detach()


@pytest.mark.parametrize("model_type", ["deepseek_v3", "olmoe"])
def test_runs_decode_column_equals_the_real_generate_steps(model_type):
    """`model_flops_per_token_decode` (the runs column) equals FlopCounterMode over generate's own decode steps with
    its static cache: the way a job decodes (runner/profiler/evaluate.py: decode)."""
    from transformers.generation.streamers import BaseStreamer

    from runner.profiler.phases import DECODE
    from runner.profiler.evaluate import PROMPT, without_prompt_pass
    from runner.profiler.cost_formulas import count_flops
    from runner.profiler.cost_run import cost_columns

    model = build_tiny_model(model_type)
    profiler = MOEProfiler(model, verbose=False)
    new = 4
    prompt = torch.randint(2, 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))

    class AfterPrompt(BaseStreamer):  # generate calls put() with the prompt, then after each new token
        calls, at = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:  # the prompt pass is done: what runs from here on is decoding
                self.at = sum(counter.flop_counts["Global"].values())
                profiler.set_phase(DECODE)

        def end(self):
            pass

    clock = AfterPrompt()
    with torch.no_grad(), profiler.phase(PROMPT), count_flops() as counter:
        model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                       min_new_tokens=new, do_sample=False, cache_implementation="static", pad_token_id=0,
                       streamer=clock)
    measured = (sum(counter.flop_counts["Global"].values()) - clock.at) / ((new - 1) * BATCH)
    layers = without_prompt_pass(profiler.layers_df())
    row, _ = cost_columns(profiler, layers, without_prompt_pass(profiler.experts_df()), batch=BATCH, seq_len=SEQ,
                          decode_tokens=new)
    assert row["model_flops_per_token_decode"] == measured
    profiler.detach()
