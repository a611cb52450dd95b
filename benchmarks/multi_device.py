"""A model spread over devices with accelerate (the runner's device=auto): equal to the unsplit model, and what the
profiler costs there.

    python benchmarks/multi_device.py --smoke                  # CPU: tiny OLMoE, whole vs split over CPU + disk offload
    python benchmarks/multi_device.py equal                    # 1+ GPUs: OLMoE width, 8 layers, bf16: whole on cuda:0 vs
                                                               #   cuda:0 + CPU offload (and, on 2+ GPUs, vs over the GPUs)
    python benchmarks/multi_device.py overhead --model mixtral # 2+ GPUs: full size, random bf16, device_map=auto:
                                                               #   bare vs routing, prefill and decode, memory per GPU

equal: one seeded random model is built on the CPU (the runner's device=auto build) and profiled whole on the first
device, then built again and placed by the runner's own dispatch (runner/job/device_map.py): `offload`, the first half of
the layers on cuda:0 and the rest offloaded to the CPU (computed on cuda:0; on CPU: to disk), and, with 2+ GPUs,
`gpus`, balanced over every GPU. Each placement must record the same routing counts per layer and expert, the same
analytic and measured FLOPs and the same loss (every batch FLOP-counted, transitions and capacity drops on, so the
cross-device paths run).

overhead: the model placed by device_map=auto (device.max_memory from --max-memory), then benchmarks/overhead.py's
interleaved rounds of `bare` (no profiler) and `routing` (MOEProfiler attached): prefill ms/forward and decode
ms/token, each as a ratio to bare's median in the same run; peak memory per GPU; which layers went where.

Writes benchmarks/results/multi-device-<mode>-<N>x<card>-<date>.json (or --out) atomically and prints a summary.
Needs accelerate (`pip install accelerate`) and the runner's own dependencies (omegaconf).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks import common, overhead, overhead_variants  # noqa: E402

SMOKE_BATCHES = dict(batches=2, batch=2, seq=32)
EQUAL_BATCHES = dict(batches=4, batch=4, seq=512)
COMPARED = ["phase", "layer", "tokens", "assignments", "k_hist", "flops", "flops_measured", "drop_rate_cf1_0",
            "jaccard_next"]


def model_spec(name: str, layers: int | None):
    """conf/model/<name>.yaml as a random-weights ModelConfig, cut to `layers` decoder layers if given."""
    from omegaconf import OmegaConf

    from runner.config.schema import ModelConfig, Weights

    path = ROOT / "conf" / "model" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--model {name}: no {path}; one of {sorted(p.stem for p in path.parent.glob('*.yaml'))}")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    fields = set(ModelConfig.__dataclass_fields__)
    spec = ModelConfig(**{k: v for k, v in raw.items() if k in fields})
    spec.weights, spec.config = Weights.random, dict(spec.config or {})
    if layers:
        spec.config["num_hidden_layers"] = layers
    return spec


def device_config(dtype: str, **placement: Any):
    from runner.config.schema import DeviceConfig

    if placement.get("device_map"):
        return DeviceConfig(name="auto", device="cuda" if torch.cuda.is_available() else "cpu", dtype=dtype,
                            **placement)
    return DeviceConfig(name="cpu", device="cpu", dtype=dtype)


def load(spec, device, seed: int = 0):
    from runner.job import models

    models.clear_cache()  # every placement builds afresh from the seed: a dispatched model cannot be undone
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return models.load(spec, device, seed)


def batches(vocab: int, batches: int, batch: int, seq: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (batch, seq), generator=g) for _ in range(batches)]


def placement_of(model, profiler=None) -> dict[str, Any]:
    """Modules of the device map per place (`0`, `1`, `cpu`, `disk`) and, with a profiler, each MoE layer's device."""
    places: dict[str, int] = {}
    for where in (getattr(model, "hf_device_map", None) or {}).values():
        places[str(where)] = places.get(str(where), 0) + 1
    return dict(modules_per_place=places, moe_layer_devices=[str(d) for d in profiler.devices] if profiler else None)


def gpu_memory() -> dict[str, dict[str, int]]:
    return {f"cuda:{i}": dict(peak_allocated_bytes=torch.cuda.max_memory_allocated(i),
                              peak_reserved_bytes=torch.cuda.max_memory_reserved(i),
                              total_bytes=torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())}


def reset_peaks() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)


# -- equal ----------------------------------------------------------------------------------------------------------

def profile(model, xs) -> dict[str, Any]:
    from runner import MOEProfiler
    from runner.profiler.evaluate import evaluate

    profiler = MOEProfiler(model, verbose=False, analyses=("capacity", "transitions"))
    try:
        start = time.perf_counter()
        result = evaluate(model, profiler, xs, reference=False, measure_flops="all")
        return dict(seconds=time.perf_counter() - start, loss=result.loss, tokens=result.tokens,
                    layers=profiler.layers_df(), experts=profiler.experts_df()[["phase", "layer", "expert", "tokens"]],
                    analytic=float(profiler.flops_per_token()["flops"].sum()), placement=placement_of(model, profiler))
    finally:
        profiler.detach()


def compare(whole: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    a, b = whole["layers"][COMPARED].reset_index(drop=True), other["layers"][COMPARED].reset_index(drop=True)
    layers_equal = a.equals(b)
    experts_equal = whole["experts"].reset_index(drop=True).equals(other["experts"].reset_index(drop=True))
    loss_rel = abs(other["loss"] - whole["loss"]) / abs(whole["loss"])
    return dict(layers_equal=layers_equal, experts_equal=experts_equal, analytic_equal=whole["analytic"] == other["analytic"],
                flops_measured_equal=a["flops_measured"].equals(b["flops_measured"]), loss=other["loss"],
                loss_rel_diff=loss_rel, tokens_diff_per_layer=(b["tokens"] - a["tokens"]).abs().tolist(),
                equal=bool(layers_equal and experts_equal and whole["analytic"] == other["analytic"] and loss_rel == 0),
                seconds=other["seconds"], placement=other["placement"])


def run_equal(args, layers: int | None) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if not args.smoke else 0
    if not args.smoke and not gpus:
        raise SystemExit("equal: no CUDA GPU; use --smoke on a CPU")
    dtype = "float32" if args.smoke else "bfloat16"
    spec = model_spec(args.model or ("olmoe_tiny" if args.smoke else "olmoe"), layers)
    shape = SMOKE_BATCHES if args.smoke else EQUAL_BATCHES
    xs = batches(int(spec.config["vocab_size"]), **shape)
    first = torch.device("cuda:0" if gpus else "cpu")

    loaded = load(spec, device_config(dtype))
    size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    print(f"equal: {spec.name} ({spec.config.get('num_hidden_layers')} layers, {size / 2**30:.2f} GiB {dtype}), "
          f"{shape['batches']} batches of {shape['batch']}x{shape['seq']} tokens")
    whole = profile(loaded.model.to(first), xs)
    print(f"  whole on {first}: loss {whole['loss']:.6f}, {whole['seconds']:.1f} s")
    del loaded
    offload = "cpu" if gpus else "disk"
    placements = {"offload": dict(device_map="sequential", max_memory={0 if gpus else "cpu": size // 2,
                                                                      **({"cpu": "1000GiB"} if gpus else {})})}
    if gpus >= 2:
        placements["gpus"] = dict(device_map="balanced")
    out: dict[str, Any] = dict(whole=dict(loss=whole["loss"], seconds=whole["seconds"], device=str(first),
                                          analytic_flops_per_token=whole["analytic"]), placements={})
    with tempfile.TemporaryDirectory(prefix="multi-device-") as folder:
        for name, placement in placements.items():
            if placement.get("max_memory") and not gpus:
                placement["offload_folder"] = folder
            split = profile(load(spec, device_config(dtype, **placement)).model, xs)
            result = out["placements"][name] = compare(whole, split)
            print(f"  {name} ({result['placement']['modules_per_place']}, MoE layers on "
                  f"{sorted(set(result['placement']['moe_layer_devices']))}, rest offloaded to {offload}): "
                  f"{'EQUAL' if result['equal'] else 'DIFFERS'} (layers {result['layers_equal']}, experts "
                  f"{result['experts_equal']}, measured FLOPs {result['flops_measured_equal']}, loss "
                  f"{result['loss']:.6f}, rel. diff {result['loss_rel_diff']:.2e}), {result['seconds']:.1f} s")
    out["equal"] = all(p["equal"] for p in out["placements"].values())
    return out


# -- overhead -------------------------------------------------------------------------------------------------------

def run_overhead(args) -> dict[str, Any]:
    gpus = torch.cuda.device_count()
    if gpus < 1 and not args.smoke:
        raise SystemExit("overhead: no CUDA GPU (it measures a model spread over GPUs); use --smoke on a CPU")
    if gpus < 2 and not args.smoke:
        print(f"overhead: only {gpus} GPU: device_map=auto puts the model on it (and offloads what does not fit)")
    dtype = "float32" if args.smoke else "bfloat16"
    spec = model_spec(args.model or ("olmoe_tiny" if args.smoke else "mixtral"), args.layers)
    max_memory = json.loads(args.max_memory) if args.max_memory else None
    start = time.perf_counter()
    loaded = load(spec, device_config(dtype, device_map="auto", max_memory=max_memory))
    load_s = time.perf_counter() - start
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())
    print(f"overhead: {spec.name} ({params / 1e9:.2f} B params, {dtype}) on {loaded.device_name}, loaded in "
          f"{load_s:.0f} s; map: {placement_of(model)['modules_per_place']}")
    preset = overhead.PRESETS["smoke" if args.smoke else "full"]
    shape = argparse.Namespace(**{**preset, **{k: v for k, v in vars(args).items() if v is not None and k in preset}})
    work = overhead_variants.Workload(model, loaded.device, shape)
    reset_peaks()
    samples, extras = overhead_variants.run_timing(model, work, ["bare", "routing"], shape.reps, shape.warmup)
    table = overhead_variants.summarise(samples, extras, ["bare", "routing"], dict(gpus=gpus))
    ratios = {row.phase: dict(bare_ms=samples[("bare", row.phase)], routing_ms=samples[("routing", row.phase)],
                              median_ms=row.median_ms, ratio_to_bare=row.ratio_to_bare)
              for row in table[table["variant"] == "routing"].itertuples()}
    for phase, entry in ratios.items():
        print(f"  {phase}: routing / bare = {entry['ratio_to_bare']:.3f} (routing median {entry['median_ms']:.2f} "
              f"{'ms/forward' if phase == 'prefill' else 'ms/token'})")
    memory = gpu_memory() if gpus else {}
    for device, peaks in memory.items():
        print(f"  {device}: peak allocated {peaks['peak_allocated_bytes'] / 2**30:.1f} GiB, reserved "
              f"{peaks['peak_reserved_bytes'] / 2**30:.1f} of {peaks['total_bytes'] / 2**30:.1f} GiB")
    from runner import MOEProfiler

    with MOEProfiler(model, verbose=False) as profiler:
        placement = placement_of(model, profiler)
    return dict(model=spec.name, params=params, load_s=load_s, device_name=loaded.device_name, max_memory=max_memory,
                shape=vars(shape), ratios=ratios, memory_by_device=memory, placement=placement)


# -- main -------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", choices=("equal", "overhead", "both"), default="both",
                   help="equal (placements vs whole), overhead (2+ GPUs), both (default)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny OLMoE (checks the script, measures nothing)")
    p.add_argument("--model", help="conf/model/<name>.yaml (default: olmoe for equal, mixtral for overhead)")
    p.add_argument("--layers", type=int, help="keep this many decoder layers (default: 8 for equal, all for overhead)")
    p.add_argument("--max-memory", help="overhead: device.max_memory as JSON, e.g. '{\"0\": \"70GiB\", \"cpu\": \"200GiB\"}'")
    for name in ("reps", "warmup", "prefill_batch", "prefill_len", "prefill_iters", "decode_tokens", "decode_prompt"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help="overhead: as benchmarks/overhead.py")
    p.add_argument("--out", help="output JSON (default: benchmarks/results/multi-device-<mode>-<N>x<card>-<date>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        import accelerate
    except ImportError:
        raise SystemExit("multi_device: accelerate is not installed (pip install accelerate, or carry its wheel)")
    import transformers

    gpus = torch.cuda.device_count() if not args.smoke else 0
    card = torch.cuda.get_device_name(0) if gpus else "cpu"
    meta = dict(gpus=gpus, card=card, torch=torch.__version__, transformers=transformers.__version__,
                accelerate=accelerate.__version__, date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    print(f"multi_device: {gpus} x {card}, torch {meta['torch']}, transformers {meta['transformers']}, accelerate "
          f"{meta['accelerate']}")
    results: dict[str, Any] = dict(meta=meta)
    if args.mode in ("equal", "both"):
        results["equal"] = run_equal(args, args.layers or (None if args.smoke else 8))
    if args.mode in ("overhead", "both"):
        if gpus >= 2 or args.smoke or args.mode == "overhead":
            results["overhead"] = run_overhead(args)
        else:
            print("overhead: skipped (needs 2+ GPUs; `overhead` runs it anyway)")
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"multi-device-{'smoke' if args.smoke else args.mode}-{gpus}x{slug}-{meta['date'][:10]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(common.jsonable(results), indent=2)
    common.atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {out}")
    if "equal" in results and not results["equal"]["equal"]:
        print("multi_device: a placement DIFFERS from the whole model (see above)")
    return results


if __name__ == "__main__":
    main()
