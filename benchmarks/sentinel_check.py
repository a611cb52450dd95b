"""CUDA check that dropped experts (sentinel index) never leak uninitialised memory into the output.

The grouped experts kernels leave rows of dropped slots uninitialised. Before each trial the CUDA caching
allocator is filled with NaN, then OLMoE-shaped layers run a dynamic-k selector through runner.profiler.experts'
one-mask forward and through transformers' own expert-parallel masking; outputs must be finite and equal.

    python benchmarks/sentinel_check.py [--trials 20] [--layers 4]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, OlmoeConfig  # noqa: E402

from runner import MOEProfiler  # noqa: E402


def poison(device: torch.device, gib: float = 8.0) -> None:
    block = torch.full((int(gib * 2**30 // 2),), float("nan"), dtype=torch.bfloat16, device=device)
    del block  # back to the caching allocator, NaN-filled


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    config = OlmoeConfig(hidden_size=2048, intermediate_size=1024, num_hidden_layers=args.layers, num_attention_heads=16,
                         num_experts=64, num_experts_per_tok=8, vocab_size=50304)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, experts_implementation="grouped_mm")
    model = model.to(device).eval()
    ids = torch.randint(0, 50304, (8, 512), device=device)
    failures, max_diff = 0, 0.0
    for trial in range(args.trials):
        outputs = {}
        for fast in (True, False):
            profiler = MOEProfiler(model, verbose=False)
            profiler.set_selector("cumsum", k_max=8, threshold=0.3, fast_skip=fast)
            poison(device)
            with torch.inference_mode():
                outputs[fast] = model(input_ids=ids).logits.float()
            k_mean = float(profiler.layers_df()["k_mean"].mean())
            profiler.detach()
        finite = bool(torch.isfinite(outputs[True]).all())
        diff = float((outputs[True] - outputs[False]).abs().max())
        max_diff = max(max_diff, diff)
        failures += (not finite) or diff != 0.0
    result = dict(device=torch.cuda.get_device_name(device), trials=args.trials, failures=failures,
                  max_abs_diff_vs_transformers=max_diff, k_mean=k_mean, torch=torch.__version__,
                  transformers=__import__("transformers").__version__)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
