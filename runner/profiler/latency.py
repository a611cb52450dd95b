"""Optional per-MoE-layer latency: CUDA events on GPU (resolved in bulk, never per layer), perf_counter on CPU.
On a model split over GPUs each block is timed on its own device's current stream, with that device's events."""
from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch


class LayerTimer:
    """Times each call of the hooked blocks; the first `warmup` calls of each layer are dropped."""

    def __init__(self, num_layers: int, warmup: int = 1, keep: int = 4096):
        self.warmup = warmup
        self.calls = [0] * num_layers
        self.samples_ms = [deque(maxlen=keep) for _ in range(num_layers)]  # bounded: memory stays fixed
        self._pending: list[tuple[int, torch.device, torch.cuda.Event, torch.cuda.Event]] = []
        self._open: dict[int, object] = {}
        # reused, per device (an event records on one device only): no new Event objects per call
        self._free_events: dict[torch.device, list[torch.cuda.Event]] = {}

    def _record(self, device: torch.device) -> "torch.cuda.Event":
        free = self._free_events.setdefault(device, [])
        event = free.pop() if free else torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return event

    def start(self, layer: int, device: torch.device) -> None:
        self.calls[layer] += 1
        if self.calls[layer] <= self.warmup:
            return
        if device.type == "cuda":
            self._open[layer] = (device, self._record(device))
        else:
            self._open[layer] = time.perf_counter()

    def stop(self, layer: int) -> None:
        begin = self._open.pop(layer, None)
        if begin is None:
            return
        if isinstance(begin, float):
            self.samples_ms[layer].append((time.perf_counter() - begin) * 1e3)
            return
        device, begin = begin
        self._pending.append((layer, device, begin, self._record(device)))
        if len(self._pending) >= 4096:  # resolve in bulk: one sync per 4096 timed calls
            self.resolve()

    def resolve(self) -> None:
        if not self._pending:
            return
        for end in {device: end for _, device, _, end in self._pending}.values():  # the last event of each device
            end.synchronize()
        for layer, device, begin, end in self._pending:
            self.samples_ms[layer].append(begin.elapsed_time(end))
            self._free_events[device] += (begin, end)
        self._pending.clear()

    def summary(self, layer: int) -> dict[str, float]:
        self.resolve()
        samples = np.asarray(self.samples_ms[layer], dtype=np.float64)
        if samples.size == 0:
            return dict(latency_ms_mean=float("nan"), latency_ms_p50=float("nan"), latency_calls=0)
        return dict(latency_ms_mean=float(samples.mean()), latency_ms_p50=float(np.median(samples)),
                    latency_calls=int(samples.size))
