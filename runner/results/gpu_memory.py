"""The runs columns of the memory each GPU used (peaks, capacity, memory_by_device as JSON) and the warning of the
sweep summary when one ran nearly full: the writer and the reader of one column format, in one place."""
from __future__ import annotations

import json
from typing import Any

NEAR_FULL = 0.95  # a GPU whose peak reserved memory passed this share of its capacity is flagged in the summaries


def memory_columns(memory) -> dict[str, Any]:
    """The runs columns of MOEProfiler.memory_df(): the peaks over the GPUs and, per GPU, its peaks and capacity."""
    if not len(memory):
        return {}
    by_device = {row.device: dict(name=row.name, peak_allocated_bytes=int(row.peak_allocated_bytes),
                                  peak_reserved_bytes=int(row.peak_reserved_bytes), total_bytes=int(row.total_bytes))
                 for row in memory.itertuples()}
    return dict(peak_allocated_bytes=int(memory["peak_allocated_bytes"].max()),
                peak_reserved_bytes=int(memory["peak_reserved_bytes"].max()),
                memory_by_device=json.dumps(by_device, sort_keys=True))


def near_full(memory_by_device: str | None) -> list[str]:
    """'cuda:1 at 97 % (77.2 of 79.6 GiB reserved)' for each GPU whose peak reserved memory passed NEAR_FULL of its
    capacity (a runs row's memory_by_device)."""
    if not isinstance(memory_by_device, str):
        return []
    out = []
    for device, peaks in json.loads(memory_by_device).items():
        share = peaks["peak_reserved_bytes"] / peaks["total_bytes"] if peaks.get("total_bytes") else 0.0
        if share > NEAR_FULL:
            out.append(f"{device} at {share:.0%} ({peaks['peak_reserved_bytes'] / 2**30:.1f} of "
                       f"{peaks['total_bytes'] / 2**30:.1f} GiB reserved)")
    return out
