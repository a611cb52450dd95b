"""Quality and speed of a model under the profiler's routing, against the model's own routing: usable without Hydra.

Blocks are packed without padding, so the targets are input_ids[:, 1:] at every position of logits[:, :-1].
KL(P_ref || P_job) and top-1 agreement compare the next-token distributions at the same positions, where the
reference pass runs the model's own routing (`MOEProfiler.default_routing()`). Means are token-weighted over all
batches (sums are taken per batch, divided once at the end).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .attach import input_device
from .frames import cuda_devices

from .phases import DECODE, PHASES, PREFILL, PROMPT  # noqa: F401 - the names callers of evaluate() use
# timed batches (and decoded ones) run once more with the profiler paused, for the `*_paused` speed figures: a few,
# interleaved with the profiled ones, so the comparison is fair without doubling the job
PAUSED_BATCHES = 3


@torch.no_grad()
def target_values(logits: torch.Tensor, input_ids: torch.Tensor, ref_logits: torch.Tensor | None = None,
                  pad_id: int | None = None) -> dict[str, torch.Tensor]:
    """Per next-token target of one batch ([B, T - 1]): `mask` (not a pad), NLL, and (with a reference) the
    reference NLL, KL(P_ref || P) and top-1 agreement."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:].to(logp.device)
    mask = torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    out = dict(mask=mask, nll=-logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    if ref_logits is not None:
        ref = F.log_softmax(ref_logits[:, :-1].float().to(logp.device), dim=-1)
        out.update(ref_nll=-ref.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
                   kl=(ref.exp() * (ref - logp)).sum(-1).clamp_min(0),  # >= 0: rounding alone gives -1e-10 and so on
                   agree=ref.argmax(-1) == logp.argmax(-1))
    return out


def _sums(values: dict[str, torch.Tensor]) -> dict[str, float]:
    mask = values["mask"]
    out = dict(targets=int(mask.sum()), nll=float(values["nll"][mask].sum()))
    if "kl" in values:
        out.update(ref_nll=float(values["ref_nll"][mask].sum()), kl=float(values["kl"][mask].sum()),
                   agree=int(values["agree"][mask].sum()))
    return out


def batch_sums(logits: torch.Tensor, input_ids: torch.Tensor, ref_logits: torch.Tensor | None = None,
               pad_id: int | None = None) -> dict[str, float]:
    """Next-token sums of one batch: targets, NLL over all non-pad targets, and (with a reference) the reference
    NLL, KL(P_ref || P) and top-1 agreement. Python numbers, so batches add up exactly."""
    return _sums(target_values(logits, input_ids, ref_logits, pad_id))


# confidence intervals: a percentile bootstrap over units (documents, or blocks), fixed seed and resamples
CI_LEVEL, CI_RESAMPLES, CI_SEED = 0.95, 1000, 0
# each interval: the runs columns' stem, its numerator sum and denominator sum over a unit
# (loss_delta: loss - ref_loss, per target on the same documents, so paired: much narrower than the two apart)
CI_RATIOS = (("loss", "nll", "targets"), ("kl", "kl", "targets"), ("top1_agreement", "agree", "targets"),
             ("loss_delta", "nll_delta", "targets"))


class UnitSums:
    """Per-unit sums of the per-target values (unit: the document a target token came from, or its block), added
    batch by batch on the host with bincount (one device-to-host copy of [B, T - 1] values per batch)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}

    def add(self, values: dict[str, torch.Tensor], units: np.ndarray) -> None:
        mask = values["mask"].cpu().numpy()
        ids = np.asarray(units, dtype=np.int64)[:, 1:][mask]  # a target belongs to its own token's unit
        held = len(next(iter(self.sums.values()), ()))
        size = max(held, int(ids.max()) + 1 if ids.size else 0)
        columns = dict(targets=None, **{key: values[key].double().cpu().numpy()[mask]
                                        for key in ("nll", "kl", "agree") if key in values})
        if "ref_nll" in values:
            columns["nll_delta"] = (values["nll"] - values["ref_nll"]).double().cpu().numpy()[mask]
        for name, weights in columns.items():
            before = np.pad(self.sums.get(name, np.zeros(0)), (0, size - held))
            self.sums[name] = before + np.bincount(ids, weights=weights, minlength=size)

    def intervals(self) -> dict[str, float | int]:
        """`<stem>_ci_low` / `<stem>_ci_high` of each ratio in CI_RATIOS whose sums were added (and ppl from loss),
        `ci_units`."""
        present = self.sums.get("targets", np.zeros(0)) > 0
        out: dict[str, float | int] = dict(ci_units=int(present.sum()))
        for stem, numerator, denominator in CI_RATIOS:
            if numerator in self.sums:
                low, high = bootstrap_ratio(self.sums[numerator][present], self.sums[denominator][present])
                out.update({f"{stem}_ci_low": low, f"{stem}_ci_high": high})
        if "loss_ci_low" in out:
            out.update(ppl_ci_low=_ppl(out["loss_ci_low"]), ppl_ci_high=_ppl(out["loss_ci_high"]))
        return out


def bootstrap_ratio(numerator: np.ndarray, denominator: np.ndarray, level: float = CI_LEVEL,
                    resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerator) / sum(denominator) over units drawn with replacement
    (a token-weighted mean, as the point estimate is), with a fixed seed: the same data give the same interval.
    NaN with fewer than two units."""
    n = len(numerator)
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    chunk = max(1, min(resamples, 4_000_000 // n))  # bounded memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        pick = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        ratios[start: start + len(pick)] = numerator[pick].sum(1) / denominator[pick].sum(1)
    tail = (1 - level) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


@dataclass
class Evaluation:
    """What `evaluate` measured. Times are wall seconds; tokens_per_s leaves out the FLOP-counted batches."""
    batches: int
    blocks: int
    tokens: int
    targets: int
    loss: float
    ppl: float
    forward_s: float
    tokens_per_s: float | None
    measured_tokens: int  # tokens of the batches run under measure_flops()
    reference: bool
    reference_s: float | None = None
    ref_loss: float | None = None
    ref_ppl: float | None = None
    kl: float | None = None
    top1_agreement: float | None = None
    # 95 % percentile-bootstrap intervals over units (UnitSums.intervals): ci_units, <stem>_ci_low / _ci_high
    intervals: dict[str, float | int] = field(default_factory=dict)
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    # the same figures with the profiler paused (hooks off; the same compiled code, in its paused variant)
    tokens_per_s_paused: float | None = None
    ttft_paused_ms: float | None = None
    tpot_paused_ms: float | None = None
    decode_steps: int | None = None
    times: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The run-level numbers, by results column name."""
        return {**{k: v for k, v in self.__dict__.items() if k not in ("times", "measured_tokens", "intervals")},
                **self.intervals}


def _mean_ms(seconds: list[float]) -> float | None:
    return 1e3 * sum(seconds) / len(seconds) if seconds else None


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def evaluate(model: torch.nn.Module, profiler, batches: Sequence[torch.Tensor], *, reference: bool = False,
             pad_id: int | None = None, measure_flops: str = "first", compile: bool = False,
             compile_mode: str | None = None, decode_tokens: int = 0, decode_pad_id: int | None = None,
             progress: bool = False, desc: str = "",
             after_batch: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
             units: Sequence[np.ndarray] | None = None) -> Evaluation:
    """Run each batch of token ids through `model` with `profiler` attached, and measure loss / perplexity, and
    with `reference=True` the KL and top-1 agreement against the model's own routing (a second, unrecorded pass).

    measure_flops: "first" counts FLOPs on the first batch only (the others are timed), "all" on every batch.
    compile: torch.compile the model (after the profiler attached, so its hooks are traced), warmed up on each batch
    shape outside the timed region. decode_tokens: after each batch, a greedy static-cache generate of that many
    tokens, timed as TTFT / TPOT, its routing recorded under the decode phase. units: per batch, a [B, T] array of
    the unit (e.g. document index) each token belongs to, for the confidence intervals; default each block its own.
    Each timed forward and each generate is run again with the profiler paused (`*_paused`: what the same model runs
    at without the profiler, in the same job; a paused compiled model runs its own compiled variant, warmed up with
    the rest).
    """
    device = input_device(model)
    gpus = cuda_devices(model) if device.type == "cuda" else []  # a split model finishes on its last GPU

    def sync() -> None:
        for gpu in gpus:
            torch.cuda.synchronize(gpu)

    forward = model
    shapes = {tuple(b.shape): b for b in reversed(batches)}.values()  # the last batch may be shorter
    if compile:
        forward = torch.compile(model, mode=compile_mode)
        with torch.no_grad():
            for warm in shapes:
                forward(input_ids=warm.to(device), use_cache=False)
                with profiler.paused():  # compiled code guards on the flag: the paused variant compiles here
                    forward(input_ids=warm.to(device), use_cache=False)
                if reference:  # the model's own routing compiles a variant of its own
                    with profiler.default_routing():
                        forward(input_ids=warm.to(device), use_cache=False)
        sync()
    times: dict[str, list[float]] = dict(ttft_s=[], tpot_s=[], steps=[])
    paused_times: dict[str, list[float]] = dict(ttft_s=[], tpot_s=[], steps=[])
    if decode_tokens:  # generate compiles its decode step per batch shape (and per top-k), paused and not
        for warm in shapes:
            decode(model, profiler, warm.to(device), decode_tokens, decode_pad_id, {})
            with profiler.paused():
                decode(model, profiler, warm.to(device), decode_tokens, decode_pad_id, {})
    profiler.reset()
    totals = dict(targets=0, nll=0.0, ref_nll=0.0, kl=0.0, agree=0)
    forward_s = reference_s = timed_s = paused_s = 0.0
    paused_tokens = paused_batches = 0
    tokens = measured_tokens = timed_tokens = 0
    unit_sums, blocks = UnitSums(), 0
    from tqdm.auto import tqdm

    for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False, file=sys.stderr)):
        x = batch.to(device)
        ref_logits = None
        if reference:
            t = time.perf_counter()
            with torch.no_grad(), profiler.default_routing():
                ref_logits = forward(input_ids=x, use_cache=False).logits
            sync()
            reference_s += time.perf_counter() - t
        measure = measure_flops == "all" or i == 0
        sync()
        t = time.perf_counter()
        with torch.no_grad(), (profiler.measure_flops() if measure else contextlib.nullcontext()):
            logits = forward(input_ids=x, use_cache=False).logits
        sync()
        elapsed = time.perf_counter() - t
        forward_s += elapsed
        tokens += x.numel()
        if measure:
            measured_tokens += x.numel()
        else:
            timed_tokens += x.numel()
            timed_s += elapsed
            if paused_batches < PAUSED_BATCHES:  # a few interleaved batches: the paused rate, not twice the job
                t = time.perf_counter()
                with torch.no_grad(), profiler.paused():
                    forward(input_ids=x, use_cache=False)
                sync()
                paused_s += time.perf_counter() - t
                paused_tokens += x.numel()
                paused_batches += 1
        values = target_values(logits, x, ref_logits, pad_id)
        for key, value in _sums(values).items():
            totals[key] += value
        unit_sums.add(values, units[i] if units is not None else blocks + np.arange(x.shape[0])[:, None]
                      + np.zeros(x.shape, dtype=np.int64))
        blocks += x.shape[0]
        del values
        del logits, ref_logits
        sequences = decode(model, profiler, x, decode_tokens, decode_pad_id, times) if decode_tokens else None
        if decode_tokens and len(paused_times["ttft_s"]) < PAUSED_BATCHES:
            with profiler.paused():
                decode(model, profiler, x, decode_tokens, decode_pad_id, paused_times)
        if after_batch is not None:
            after_batch(i, batch, sequences)
    n = max(totals["targets"], 1)
    loss = totals["nll"] / n
    result = Evaluation(
        batches=len(batches), blocks=sum(b.shape[0] for b in batches), tokens=tokens, targets=totals["targets"],
        loss=loss, ppl=_ppl(loss), forward_s=forward_s, measured_tokens=measured_tokens, reference=reference,
        tokens_per_s=(timed_tokens / timed_s) if timed_s > 0 else (tokens / forward_s if forward_s else None),
        reference_s=reference_s if reference else None, times=times, intervals=unit_sums.intervals())
    result.tokens_per_s_paused = paused_tokens / paused_s if paused_s > 0 else None
    if times["ttft_s"]:
        result.ttft_ms, result.tpot_ms = _mean_ms(times["ttft_s"]), _mean_ms(times["tpot_s"])
        result.ttft_paused_ms, result.tpot_paused_ms = _mean_ms(paused_times["ttft_s"]), _mean_ms(paused_times["tpot_s"])
        result.decode_steps = int(sum(times["steps"]))
    if reference:
        result.ref_loss = totals["ref_nll"] / n
        result.ref_ppl = _ppl(result.ref_loss)
        result.kl = totals["kl"] / n
        result.top1_agreement = totals["agree"] / n
    return result


def decode(model: torch.nn.Module, profiler, prompt: torch.Tensor, new_tokens: int, pad_id: int | None,
           times: dict[str, list[float]]) -> torch.Tensor:
    """Greedy `generate` of `new_tokens` tokens after `prompt` with a static cache (transformers compiles the decode
    step, with CUDA graphs on a GPU): the fast way a user decodes. TTFT and TPOT are timed as MoE-CAP defines them,
    from generate's own streamer callbacks (each follows a device-to-host copy of the new tokens, so the clock reads
    after the GPU finished): TTFT = first token out - start, TPOT = the mean time of each later decode step (one token
    for each of the batch's sequences). Routing of the prompt pass goes to the PROMPT phase, the decode steps to DECODE."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def put(self, value) -> None:  # first the prompt, then each new token
            self.stamps.append(time.perf_counter())
            if len(self.stamps) == 2:  # the prompt pass is done: what runs from here on is decoding
                profiler.set_phase(DECODE)

        def end(self) -> None:
            pass

    clock = Clock()
    with torch.no_grad(), profiler.phase(PROMPT):
        sequences = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, cache_implementation="static",
                       pad_token_id=pad_id, streamer=clock)
    stamps = clock.stamps
    times.setdefault("ttft_s", []).append(stamps[1] - stamps[0])
    if len(stamps) > 2:
        times.setdefault("tpot_s", []).append((stamps[-1] - stamps[1]) / (len(stamps) - 2))
    times.setdefault("steps", []).append(len(stamps) - 2)
    return sequences


def without_prompt_pass(frame):
    """A profiler frame without generate()'s prompt pass (its tokens are the prefill phase's)."""
    return frame[frame["phase"] != PROMPT].reset_index(drop=True) if "phase" in frame else frame
