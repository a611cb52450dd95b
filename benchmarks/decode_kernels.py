"""Static-cache decode on a full-width OLMoE with 4 layers: graphs, graph breaks, CUDA kernels and time per token.

    python benchmarks/decode_kernels.py bare|routing|kneedle [basic] [torch]   # one GPU; prints, writes nothing

basic: the runner's default analyses (capacity drops; else none); torch: the recorder's torch path instead of its
fused Triton kernel (runner/profiler/fused.py), to count the kernels each adds.

Compares what the profiler adds inside the compiled, CUDA-graphed decode step of
`generate(cache_implementation="static")`: the number of dynamo graphs and graph breaks (1 and 0 expected), the
CUDA kernels of a 12-token generate by name, and ms/token as (t(40) - t(8)) / 32. Run it once per variant and
compare the kernel counts; BENCHMARKS.md shows how it found a sort-based index_put fallback.
"""
import sys, time, collections, warnings
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM
from runner import MOEProfiler
from benchmarks.common import OLMOE_1B_7B


def main(variant: str, options: list[str]) -> None:
    warnings.filterwarnings("ignore")
    if "torch" in options:
        from runner.profiler import fused
        fused.ENABLED = False
    analyses = ("capacity",) if "basic" in options else ()
    cfg = AutoConfig.for_model("olmoe", **{**OLMOE_1B_7B, "num_hidden_layers": 4})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    if variant != "bare":
        p = MOEProfiler(model, verbose=False, analyses=analyses, **({"selector": "kneedle", "selector_params": {"k_max": 8}} if variant == "kneedle" else {}))
    x = torch.randint(3, 1000, (1, 64), device="cuda")
    def gen(n):
        with torch.no_grad():
            return model.generate(input_ids=x, max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static", pad_token_id=0)
    t = time.perf_counter(); gen(40); torch.cuda.synchronize(); print(variant, "warm", round(time.perf_counter() - t, 1), "s", flush=True)
    print(variant, "graph_break", dict(counters["graph_break"]), "stats", dict(counters["stats"]), flush=True)
    def timed(n):
        torch.cuda.synchronize(); t = time.perf_counter(); gen(n); torch.cuda.synchronize(); return time.perf_counter() - t
    a = min(timed(40) for _ in range(3)); b = min(timed(8) for _ in range(3))
    print(variant, f"static decode {(a - b) / 32 * 1e3:.3f} ms/token", flush=True)
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        gen(12)
    kern = collections.Counter(); dur = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kern[e.name[:70]] += 1; dur[e.name[:70]] += e.device_time
    label = " ".join([variant, *options])
    print(label, "cuda kernels in generate(12):", sum(kern.values()), f"total {sum(dur.values())/1e3:.2f} ms", flush=True)
    for name, c in kern.most_common(25): print(f"   {c:5d} {dur[name]/1e3:8.3f} ms  {name}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
