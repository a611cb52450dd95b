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

import torch
import torch.nn.functional as F

from .attach import input_device
from .frames import cuda_devices

# Routing phases: the scoring forward passes (prefill), the generated tokens (decode), and generate()'s own pass over
# the prompt, which repeats the prefill phase's tokens and is left out of the tables.
PREFILL, DECODE, PROMPT = "prefill", "decode", "prompt"
PHASES = (PREFILL, DECODE, PROMPT)


@torch.no_grad()
def batch_sums(logits: torch.Tensor, input_ids: torch.Tensor, ref_logits: torch.Tensor | None = None,
               pad_id: int | None = None) -> dict[str, float]:
    """Next-token sums of one batch: targets, NLL over all non-pad targets, and (with a reference) the reference
    NLL, KL(P_ref || P) and top-1 agreement. Python numbers, so batches add up exactly."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:].to(logp.device)
    mask = torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = dict(targets=int(mask.sum()), nll=float(nll[mask].sum()))
    if ref_logits is not None:
        ref = F.log_softmax(ref_logits[:, :-1].float().to(logp.device), dim=-1)
        ref_nll = -ref.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1).clamp_min(0)  # KL >= 0: float rounding alone gives -1e-10 and so on
        agree = ref.argmax(-1) == logp.argmax(-1)
        out.update(ref_nll=float(ref_nll[mask].sum()), kl=float(kl[mask].sum()), agree=int(agree[mask].sum()))
    return out


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
        return {k: v for k, v in self.__dict__.items() if k not in ("times", "measured_tokens")}


def _mean_ms(seconds: list[float]) -> float | None:
    return 1e3 * sum(seconds) / len(seconds) if seconds else None


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def evaluate(model: torch.nn.Module, profiler, batches: Sequence[torch.Tensor], *, reference: bool = False,
             pad_id: int | None = None, measure_flops: str = "first", compile: bool = False,
             compile_mode: str | None = None, decode_tokens: int = 0, decode_pad_id: int | None = None,
             progress: bool = False, desc: str = "",
             after_batch: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None) -> Evaluation:
    """Run each batch of token ids through `model` with `profiler` attached, and measure loss / perplexity, and
    with `reference=True` the KL and top-1 agreement against the model's own routing (a second, unrecorded pass).

    measure_flops: "first" counts FLOPs on the first batch only (the others are timed), "all" on every batch.
    compile: torch.compile the model (after the profiler attached, so its hooks are traced), warmed up on each batch
    shape outside the timed region. decode_tokens: after each batch, a greedy static-cache generate of that many
    tokens, timed as TTFT / TPOT, its routing recorded under the decode phase. Each timed forward and each generate
    is run again with the profiler paused (`*_paused`: what the same model runs at without the profiler, in the same
    job; a paused compiled model runs its own compiled variant, warmed up with the rest).
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
    tokens = measured_tokens = timed_tokens = 0
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
            t = time.perf_counter()
            with torch.no_grad(), profiler.paused():
                forward(input_ids=x, use_cache=False)
            sync()
            paused_s += time.perf_counter() - t
        for key, value in batch_sums(logits, x, ref_logits, pad_id).items():
            totals[key] += value
        del logits, ref_logits
        sequences = decode(model, profiler, x, decode_tokens, decode_pad_id, times) if decode_tokens else None
        if decode_tokens:
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
        reference_s=reference_s if reference else None, times=times)
    result.tokens_per_s_paused = timed_tokens / paused_s if paused_s > 0 else None
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
