"""torch's intra-op thread count, set for the length of a block and restored after it."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block, the previous count restored after it; None leaves it as it is."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TINY_PARAMS = 100_000_000


def cpu_threads(device_cfg, device, params_total: int) -> int | None:
    """Intra-op threads for a job's evaluation on CPU: device.num_threads, or 1 for tiny models (at that size extra
    threads only add synchronisation, and on a busy machine they make each op 100x slower); None: leave them."""
    if device.type != "cpu":
        return None
    if device_cfg.num_threads is not None:
        return device_cfg.num_threads
    return 1 if params_total < TINY_PARAMS else None
