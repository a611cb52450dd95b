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
