"""Trained models shipped in the package, and the text they were trained on.

`pydoc_topics(split)` is the one definition of the training / held-out split of the CPython documentation text that
ships in the standard library (`pydoc_data.topics`): the topics in sorted name order, every tenth from the seventh
held out (8 of 79 topics, about 11 % of the bytes). The recipe (runner/trained/train.py) trains on "train"; the dataset
`dataset=pydoc_heldout` (kind pydoc, split heldout) reads "heldout". No torch here: the schema imports it.
"""
from __future__ import annotations

from pathlib import Path

TRAINED_DIR = Path(__file__).resolve().parent
SPLITS = ("train", "heldout")
HELD_OUT_EVERY, HELD_OUT_FROM = 10, 6


def pydoc_topics(split: str) -> list[str]:
    """The texts of the topics in `split` ("train" or "heldout"), in sorted topic-name order."""
    from pydoc_data.topics import topics

    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    held_out = split == "heldout"
    return [topics[name] for i, name in enumerate(sorted(topics))
            if (i % HELD_OUT_EVERY == HELD_OUT_FROM) == held_out]


def is_shipped(hf_id: str | None) -> bool:
    """Whether `hf_id` names a checkpoint directory shipped in the package (runner/trained/NAME)."""
    return hf_id is not None and Path(hf_id).parent == TRAINED_DIR and (Path(hf_id) / "config.json").is_file()
