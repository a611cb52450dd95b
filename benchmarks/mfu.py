"""S-MFU and S-MBU of full-size OLMoE-1B-7B (random bf16 weights, one GPU), eager and compiled, and how far bare
transformers is from the roofline on the card.

    python benchmarks/mfu.py                       # GPU: OLMoE-1B-7B, prefill 8 x 512, decode 64 tokens
    python benchmarks/mfu.py --tiny --device cpu   # CPU: tiny OLMoE, a few seconds (the smoke test runs this)

No Hydra: what a job computes, through the library. Per mode (eager, compiled):

  job       MOEProfiler + runner.profiler.evaluate over `--batches` batches (the first FLOP-counted, the others
            timed), with a greedy static-cache decode of `--decode-tokens` after each; then the job's cost columns
            (runner.profiler.cost_run.cost_columns): whole-model FLOPs/token analytic and measured, bytes per token,
            prefill S-MFU (analytic FLOPs x tokens/s / peak) and decode S-MBU (bytes per step / TPOT / peak bandwidth)
  bare      the model without the profiler: the median of `--reps` prefill forwards (logits of the last position
            only, as benchmarks/overhead.py times them), against the time its FLOPs take at the card's measured
            bf16 matmul rate and at the datasheet peak (the roofline)

The card's rates are measured too: a square bf16 matmul (`--matmul-size`) and a device-to-device copy of 2 GiB.
Peaks come from runner/profiler/cost_hardware.py unless --peak-tflops / --peak-bandwidth-gbs are given.
Writes <out>/mfu.json atomically and prints the numbers.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import OLMOE_1B_7B, TINY_OLMOE, atomic_write, build_model, jsonable, timed_ms  # noqa: E402


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    """The rate of a square matmul, TFLOP/s: the card's practical dense peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up (cuBLAS heuristics)
    ms = statistics.median(timed_ms(lambda: a @ b, device) for _ in range(reps))
    return 2 * size**3 / (ms / 1e3) / 1e12


def copy_gbs(device: torch.device, nbytes: int, reps: int) -> float:
    """Device-to-device copy rate, GB/s of bytes read plus written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = statistics.median(timed_ms(lambda: dst.copy_(src), device) for _ in range(reps))
    return 2 * nbytes / (ms / 1e3) / 1e9


def job(model, args, mode: str, peaks: tuple[float | None, float | None]) -> dict[str, Any]:
    """One job's numbers, as the runner computes them (without Hydra)."""
    from runner.profiler import MOEProfiler
    from runner.profiler.evaluate import PHASES, evaluate, without_prompt_pass
    from runner.profiler.cost_run import cost_columns

    gen = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    batches = [torch.randint(3, vocab, (args.batch, args.seq_len), generator=gen) for _ in range(args.batches)]
    profiler = MOEProfiler(model, verbose=False, phases=PHASES)
    try:
        result = evaluate(model, profiler, batches, compile=mode == "compiled", decode_tokens=args.decode_tokens,
                          decode_pad_id=model.config.pad_token_id)
        layers = without_prompt_pass(profiler.layers_df())
        experts = without_prompt_pass(profiler.experts_df())
        columns, _ = cost_columns(profiler, layers, experts, batch=args.batch, seq_len=args.seq_len,
                                  decode_tokens=args.decode_tokens, measured_tokens=result.measured_tokens,
                                  tokens_per_s=result.tokens_per_s, tpot_ms=result.tpot_ms, peak_tflops=peaks[0],
                                  peak_bandwidth_gbs=peaks[1])
    finally:
        profiler.detach()
    return dict(tokens_per_s=result.tokens_per_s, ttft_ms=result.ttft_ms, tpot_ms=result.tpot_ms,
                prefill_ms_per_batch=args.batch * args.seq_len / result.tokens_per_s * 1e3, **columns)


def bare_prefill(model, args, mode: str, flops: float, rates: dict[str, float | None]) -> dict[str, Any]:
    """The bare model's prefill time against the time its FLOPs take at the measured and the peak matmul rate."""
    device = next(model.parameters()).device
    forward = torch.compile(model) if mode == "compiled" else model
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq_len),
                        generator=torch.Generator().manual_seed(args.seed)).to(device)

    def run() -> None:
        with torch.no_grad():
            forward(input_ids=ids, use_cache=False, logits_to_keep=1)

    for _ in range(2):
        run()  # compile and warm up, untimed
    ms = statistics.median(timed_ms(run, device) for _ in range(args.reps))
    out: dict[str, Any] = dict(ms=ms, flops=flops, achieved_tflops=flops / (ms / 1e3) / 1e12)
    for name, rate in rates.items():
        if rate:
            out[f"roofline_ms_at_{name}"] = flops / (rate * 1e12) * 1e3
            out[f"fraction_of_{name}"] = out[f"roofline_ms_at_{name}"] / ms
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny OLMoE (hidden 64, 2 layers): a CPU check of the script")
    p.add_argument("--device", default=None, help="cuda (default) or cpu")
    p.add_argument("--batch", type=int, default=None, help="sequences per prefill batch (default 8; tiny 2)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; tiny 32)")
    p.add_argument("--batches", type=int, default=None, help="batches per job, the first FLOP-counted (default 6; tiny 2)")
    p.add_argument("--decode-tokens", type=int, default=None, help="greedy tokens after each batch (default 64; tiny 4)")
    p.add_argument("--reps", type=int, default=None, help="timed bare prefills (default 20; tiny 2)")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul for the measured rate (default 8192)")
    p.add_argument("--modes", default="eager,compiled", help="eager,compiled (compiled is slow on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 TFLOP/s (default: the table)")
    p.add_argument("--peak-bandwidth-gbs", type=float, default=None, help="the card's HBM GB/s (default: the table)")
    p.add_argument("--out", default="outputs/benchmarks", help="directory for mfu.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    defaults = (dict(device="cpu", batch=2, seq_len=32, batches=2, decode_tokens=4, reps=2, matmul_size=256)
                if args.tiny else dict(device="cuda", batch=8, seq_len=512, batches=6, decode_tokens=64, reps=20,
                                       matmul_size=8192))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from runner.profiler.cost_hardware import peak_for

    args = parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)  # a tiny model on a busy CPU: extra threads only add synchronisation
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})"
    peaks = peak_for(name, args.peak_tflops, args.peak_bandwidth_gbs, cuda=cuda)
    measured = dict(matmul_tflops=matmul_tflops(device, dtype, args.matmul_size, 10),
                    copy_gbs=copy_gbs(device, (2 << 30) if cuda else (64 << 20), 10))
    model = build_model(dict(TINY_OLMOE if args.tiny else OLMOE_1B_7B), device, dtype, args.seed)
    out: dict[str, Any] = dict(meta=dict(device_name=name, torch_version=torch.__version__, date=str(_dt.date.today()),
                                         model="tiny OLMoE" if args.tiny else "OLMoE-1B-7B (random weights)",
                                         dtype=str(dtype), args=vars(args)),
                               peaks=dict(tflops=peaks[0], bandwidth_gbs=peaks[1]), measured=measured)
    import transformers

    out["meta"]["transformers_version"] = transformers.__version__
    from runner.profiler import MOEProfiler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False, metrics=False)
    flops = profiler.forward_cost().flops(args.batch, args.seq_len, logits_positions=1,
                                          moe_per_token=float(profiler.flops_per_token()["flops"].sum()))
    profiler.detach()
    rates = dict(measured_matmul=measured["matmul_tflops"], peak=peaks[0])
    for mode in args.modes.split(","):
        torch._dynamo.reset()
        out[f"bare_{mode}"] = bare_prefill(model, args, mode, flops, rates)
        torch._dynamo.reset()
        out[f"job_{mode}"] = job(model, args, mode, peaks)
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "mfu.json", lambda tmp: Path(tmp).write_text(json.dumps(jsonable(out), indent=2)))
    print(report(out))
    return out


def report(out: dict[str, Any]) -> str:
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    m, peaks = out["measured"], out["peaks"]
    lines = [f"{out['meta']['device_name']}: {out['meta']['model']}; measured matmul {m['matmul_tflops']:.3g} "
             f"TFLOP/s, copy {m['copy_gbs']:.0f} GB/s; peaks {peaks['tflops']} TFLOP/s, {peaks['bandwidth_gbs']} GB/s"]
    for mode in ("eager", "compiled"):
        if f"job_{mode}" not in out:
            continue
        j, b = out[f"job_{mode}"], out[f"bare_{mode}"]
        lines.append(f"{mode}: job prefill {j['tokens_per_s']:,.0f} tok/s, S-MFU {pct(j.get('s_mfu_prefill'))}; "
                     f"decode TPOT {j['tpot_ms']:.2f} ms, S-MBU {pct(j.get('s_mbu_decode'))}; whole-model "
                     f"{j['model_flops_per_token_analytic']:,.0f} FLOPs/token (measured "
                     f"{j['model_flops_per_token_measured']:,.0f})")
        roof = b.get("roofline_ms_at_measured_matmul")
        lines.append(f"{mode}: bare prefill {b['ms']:.2f} ms = {b['achieved_tflops']:.3g} TFLOP/s; its FLOPs take "
                     f"{roof:.2f} ms at the measured matmul rate ({pct(b.get('fraction_of_measured_matmul'))} of it)"
                     + (f", {b['roofline_ms_at_peak']:.2f} ms at the peak" if "roofline_ms_at_peak" in b else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
