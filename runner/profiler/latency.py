"""Optional per-MoE-layer latency: CUDA events on GPU (resolved in bulk, never per layer), perf_counter on CPU.
On a model split over GPUs each block is timed on its own device's current stream, with that device's events."""
from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch


class LayerTimer:
    """Times each call of the hooked blocks, per (phase, layer): a prefill call and a one-token decode step are
    different quantities, so they are never pooled. The first `warmup` calls of each (phase, layer) are dropped."""

    def __init__(self, num_layers: int, warmup: int = 1, keep: int = 4096):
        self.num_layers, self.warmup, self.keep = num_layers, warmup, keep
        self.calls: dict[str, list[int]] = {}
        self.samples_ms: dict[str, list[deque]] = {}  # bounded per (phase, layer): memory stays fixed
        self._pending: list[tuple[deque, torch.device, torch.cuda.Event, torch.cuda.Event]] = []
        self._open: dict[int, object] = {}
        # reused, per device (an event records on one device only): no new Event objects per call
        self._free_events: dict[torch.device, list[torch.cuda.Event]] = {}

    def _record(self, device: torch.device) -> "torch.cuda.Event":
        free = self._free_events.setdefault(device, [])
        event = free.pop() if free else torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return event

    def _phase(self, phase: str) -> tuple[list[int], list[deque]]:
        if phase not in self.calls:
            self.calls[phase] = [0] * self.num_layers
            self.samples_ms[phase] = [deque(maxlen=self.keep) for _ in range(self.num_layers)]
        return self.calls[phase], self.samples_ms[phase]

    def start(self, layer: int, device: torch.device, phase: str = "prefill") -> None:
        calls, samples = self._phase(phase)
        calls[layer] += 1
        if calls[layer] <= self.warmup:
            return
        sink = samples[layer]
        if device.type == "cuda":
            self._open[layer] = (sink, device, self._record(device))
        else:
            self._open[layer] = (sink, time.perf_counter())

    def stop(self, layer: int) -> None:
        begin = self._open.pop(layer, None)
        if begin is None:
            return
        if len(begin) == 2:
            sink, started = begin
            sink.append((time.perf_counter() - started) * 1e3)
            return
        sink, device, started = begin
        self._pending.append((sink, device, started, self._record(device)))
        if len(self._pending) >= 4096:  # resolve in bulk: one sync per 4096 timed calls
            self.resolve()

    def resolve(self) -> None:
        if not self._pending:
            return
        for end in {device: end for _, device, _, end in self._pending}.values():  # the last event of each device
            end.synchronize()
        for sink, device, begin, end in self._pending:
            sink.append(begin.elapsed_time(end))
            self._free_events[device] += (begin, end)
        self._pending.clear()

    def summary(self, layer: int, phase: str = "prefill") -> dict[str, float]:
        """Mean and median time per call of `layer` in `phase`, and the calls timed (NaN, NaN, 0: none)."""
        self.resolve()
        samples = np.asarray(self.samples_ms[phase][layer] if phase in self.samples_ms else (), dtype=np.float64)
        if samples.size == 0:
            return dict(latency_ms_mean=float("nan"), latency_ms_p50=float("nan"), latency_calls=0)
        return dict(latency_ms_mean=float(samples.mean()), latency_ms_p50=float(np.median(samples)),
                    latency_calls=int(samples.size))
