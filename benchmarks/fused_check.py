"""The fused routing kernel on a GPU: equal to the torch path, one launch per layer per call, traced and graphed.

    python benchmarks/fused_check.py [--out DIR]       # one CUDA GPU; writes DIR/fused-check.json

1. Kernel against the torch reference on CUDA (random and adversarial calls, as tests/e2e/test_fused_stats.py does
   through the interpreter on the CPU): the largest relative difference of each float sum, counts equal.
2. A tiny OLMoE with the profiler (analysis=basic: capacity drops): eager, torch.compile(fullgraph=True) and
   mode="reduce-overhead" give the same counts as the torch recorder; graph breaks, and whether inductor skipped
   CUDA graphs.
3. CUDA kernels of one profiled eager forward per layer, fused and torch path (torch.profiler).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from runner.profiler import fused  # noqa: E402
from runner.profiler.analysis_set import Analyses  # noqa: E402
from runner.profiler.drops import add_call_drops  # noqa: E402
from runner.profiler.metrics import router_probs  # noqa: E402
from runner.profiler.accumulators import LayerAccumulators  # noqa: E402

EXACT = ("counts", "k_hist", "drops")


def kernel_against_reference() -> list[dict]:
    out = []
    cases = [("random 64x8 prefill", 64, 64, 8, 4096, "softmax"), ("decode 1 token", 64, 64, 8, 1, "softmax"),
             ("E=6 k=1", 6, 6, 1, 333, "softmax"), ("k=E", 6, 6, 6, 50, "softmax"),
             ("sigmoid, zero-compute cols", 10, 8, 3, 257, "sigmoid"), ("ties and NaN", 10, 8, 4, 200, "softmax")]
    for name, width, real, k, n, scoring in cases:
        torch.manual_seed(len(out))
        groups = [LayerAccumulators([0, 1], width, [real, real], 2, torch.device("cuda"), Analyses.of(("capacity",)))
                  for _ in range(2)]
        reference, kernel = groups
        reference.fused = False
        assert kernel.fused, "the fused kernel is not available on this GPU"
        for call in range(3):
            logits = (torch.randn(n, width, device="cuda") * 3).to(torch.bfloat16)
            if name.startswith("ties"):
                logits = logits.float().round()
                logits[:5] = 0
                logits[7, 3] = float("nan")
            weight, index = router_probs(logits, scoring).topk(k, dim=-1)
            if name.startswith("ties"):
                index[10:20, -1] = -1
                index[20:25, 0] = 9
            phase = call % 2
            for g in groups:
                g.phase.fill_(phase)
            reference.accumulate(slice(call % 2, call % 2 + 1), logits[None], index[None], weight[None], scoring)
            add_call_drops(reference, slice(call % 2, call % 2 + 1), index[None], real, dense=False)
            kernel.add_call(call % 2, logits, index, weight, real, scoring, traced=False)
        torch.cuda.synchronize()
        row = dict(case=name, tokens_per_call=n)
        for buffer in reference.shapes():
            want, got = getattr(reference, buffer), getattr(kernel, buffer)
            if buffer in EXACT:
                row[buffer + "_equal"] = bool(torch.equal(want, got))
            else:
                both = ~(torch.isnan(want) & torch.isnan(got))
                row[buffer + "_nan_same"] = bool(torch.equal(torch.isnan(want), torch.isnan(got)))
                diff = (want[both] - got[both]).abs().max().item() if both.any() else 0.0
                row[buffer + "_max_abs_diff"] = diff
                row[buffer + "_max_rel_diff"] = diff / max(want[both].abs().max().item(), 1e-300) if both.any() else 0.0
        row["scratch_clean"] = not kernel.call_counts.any().item() and not kernel.tickets.any().item()
        print(row, flush=True)
        out.append(row)
    return out


def tiny_model():
    from transformers import AutoConfig, AutoModelForCausalLM
    from benchmarks.common import TINY_OLMOE

    cfg = AutoConfig.for_model("olmoe", **{**TINY_OLMOE, "num_experts": 12, "num_experts_per_tok": 3})
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()


def model_paths() -> dict:
    from torch._dynamo.utils import counters
    from runner import MOEProfiler

    x = torch.randint(3, 200, (2, 24), device="cuda")
    results = {}
    for label, enabled, mode in [("torch eager", False, None), ("fused eager", True, None),
                                 ("fused compile fullgraph", True, "default"),
                                 ("fused reduce-overhead", True, "reduce-overhead")]:
        torch._dynamo.reset()
        counters.clear()
        fused.ENABLED = enabled
        model = tiny_model()
        profiler = MOEProfiler(model, verbose=False, analyses=("capacity",))
        run = model if mode is None else torch.compile(model, mode=mode, fullgraph=True)
        with torch.no_grad():
            for _ in range(3):
                run(input_ids=x)
        torch.cuda.synchronize()
        snap = profiler.recorder.snapshot()
        results[label] = dict(
            fused=profiler.recorder.groups[0].fused, counts=snap["counts"].tolist(), k_hist=snap["k_hist"].tolist(),
            drops=snap["drops"].tolist(), sums=snap["sums"].tolist(),
            graph_breaks=sum(counters["graph_break"].values()),
            cudagraph_skips=dict(counters["inductor"]).get("cudagraph_skips", 0))
        profiler.detach()
    fused.ENABLED = True
    base = results["torch eager"]
    for label, r in results.items():
        r["counts_equal_torch"] = r["counts"] == base["counts"] and r["k_hist"] == base["k_hist"] and \
            r["drops"] == base["drops"]
        r["sums_max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-12) for ra, rb in zip(r["sums"], base["sums"])
                                     for pa, pb in zip(ra, rb) for a, b in zip(pa, pb))
        print(label, {k: v for k, v in r.items() if k not in ("counts", "k_hist", "sums", "drops")}, flush=True)
    return results


def eager_kernels() -> dict:
    from torch.profiler import ProfilerActivity, profile
    from runner import MOEProfiler

    out = {}
    x1 = torch.randint(3, 200, (1, 1), device="cuda")
    for label, enabled in [("bare", None), ("torch", False), ("fused", True)]:
        model = tiny_model()
        profiler = None
        if enabled is not None:
            fused.ENABLED = enabled
            profiler = MOEProfiler(model, verbose=False, analyses=("capacity",))
        with torch.no_grad():
            for _ in range(3):
                model(input_ids=x1)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(input_ids=x1)
                torch.cuda.synchronize()
        kernels = collections.Counter(e.name[:60] for e in prof.events()
                                      if e.device_type == torch.autograd.DeviceType.CUDA)
        out[label] = dict(total=sum(kernels.values()), names=dict(kernels.most_common(12)))
        if profiler is not None:
            profiler.detach()
    fused.ENABLED = True
    layers = 2
    for label in ("torch", "fused"):
        out[label]["extra_per_layer"] = (out[label]["total"] - out["bare"]["total"]) / layers
        print(f"eager 1-token forward, {label}: {out[label]['extra_per_layer']:.1f} extra CUDA kernels per layer "
              f"({out[label]['names']})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="outputs/benchmarks")
    args = p.parse_args()
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=__import__("triton").__version__, kernel=kernel_against_reference(),
                  model=model_paths(), eager_kernels=eager_kernels())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "fused-check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
