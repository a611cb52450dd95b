"""Dataset slices -> documents -> token blocks of exactly `seq_len` tokens (packed, no padding).

Documents are joined as <bos> doc <eos> <bos> doc <eos> ... (tokenizer's specials where it has them) and the stream is
cut into blocks of seq_len; the incomplete tail is dropped. Every target in a block is a real next token, so the loss
is the mean NLL over all B * (seq_len - 1) positions of a batch.

Documents are streamed (a paragraph, a line, a list item or a row batch at a time) and tokenized only until the blocks
a run needs are filled, so memory does not grow with the size of the file.
"""
from __future__ import annotations

import glob
import io
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, one_line
from .readers import file_format, paragraphs, read_file
from ..config.schema import SLICE, DatasetConfig, DatasetKind

log = logging.getLogger(__name__)


@dataclass
class Blocks:
    ids: Any  # LongTensor [num_blocks, seq_len]
    documents: int  # documents read: with max_tokens, only those the blocks needed
    characters: int
    tokens_total: int  # tokens before the tail was dropped
    doc_starts: list[int] = field(default_factory=list)  # offset of each document's first token (bos) in ids.flatten()

    def documents_at(self, block: int, positions: Any) -> Any:
        """The index (in reading order) of the document each position of block `block` came from."""
        import numpy as np

        offsets = block * int(self.ids.shape[1]) + np.asarray(positions)
        return np.searchsorted(np.asarray(self.doc_starts), offsets, side="right") - 1

    def documents_of(self, first: int, count: int) -> Any:
        """[count, seq_len]: the document of every token of blocks first .. first + count - 1."""
        import numpy as np

        return self.documents_at(first, np.arange(count * int(self.ids.shape[1]))).reshape(count, -1)

    @property
    def num_blocks(self) -> int:
        return int(self.ids.shape[0])


def slice_bounds(spec: str | None, count: Callable[[], int]) -> tuple[int, int | None]:
    """Python / datasets slice syntax -> (start, stop) on the documents: "[:64]", "[10:20]", "[-5:]", "[:10%]".
    `count` is called only when a bound needs the number of documents (a negative or % bound)."""
    if spec is None:
        return 0, None
    match = SLICE.match(spec)
    if match is None:
        raise DataError(f"dataset.slice {spec!r} is not a slice such as '[:64]' or '[:10%]'")
    texts = match.group(1), match.group(2)
    total = count() if any(t is not None and (t.startswith("-") or t.endswith("%")) for t in texts) else None

    def bound(text: str | None) -> int | None:
        if text is None:
            return None
        value = round(total * int(text[:-1]) / 100) if text.endswith("%") else int(text)
        return max(total + value, 0) if value < 0 else value

    start, stop = bound(texts[0]), bound(texts[1])
    return start or 0, stop


class Documents:
    """The documents of a dataset slice, read lazily: each pass streams the source again and stops where the consumer
    stops, so a run that needs a few blocks reads a few documents of a file of any size. Constructing it reads up to
    the first document of the slice, so an empty source or slice fails before the model loads."""

    def __init__(self, source: Callable[[], Iterator[str]], spec: str | None, what: str, empty: str):
        self._source = source
        self.start, self.stop = slice_bounds(spec, lambda: sum(1 for _ in source()))
        self.read = 0  # documents handed out by the last pass
        if next(iter(self._slice()), None) is None:
            total = sum(1 for _ in source())
            if total == 0:
                raise DataError(empty)
            raise DataError(f"dataset slice {spec} of {what} is empty ({total} documents available)")

    def _slice(self) -> Iterator[str]:
        if self.stop is not None and self.stop <= self.start:
            return iter(())
        return itertools.islice(self._source(), self.start, self.stop)

    def __iter__(self) -> Iterator[str]:
        self.read = 0
        for doc in self._slice():
            self.read += 1
            yield doc


def load_documents(cfg: DatasetConfig) -> Documents:
    if cfg.kind is DatasetKind.builtin:
        from .corpus import TEXT

        return Documents(lambda: paragraphs(io.StringIO(TEXT)), cfg.slice, "the built-in text", "the built-in text is empty")
    if cfg.kind is DatasetKind.pydoc:
        from ..trained import pydoc_topics

        return Documents(lambda: iter(pydoc_topics(cfg.split)), cfg.slice, f"the pydoc {cfg.split} text",
                         f"the pydoc {cfg.split} text is empty")
    if cfg.kind is DatasetKind.local:
        paths = _local_paths(cfg)
        blank = "" if file_format(paths[0], cfg.format) == "text" else f", or no non-blank {cfg.field!r} values"
        return Documents(lambda: (d for p in paths for d in read_file(p, cfg)), cfg.slice, cfg.path,
                         f"dataset.path {cfg.path!r} has no text (empty or whitespace only{blank}); "
                         "point dataset.path at a file with text")
    return _hf_documents(cfg)


def _local_paths(cfg: DatasetConfig) -> list[Path]:
    pattern = str(Path(cfg.path).expanduser())
    paths = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    if not paths:
        raise DataError(f"dataset.path {cfg.path!r} matches no files")
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"dataset file {path} does not exist")
        if not path.is_file():
            raise DataError(f"dataset path {path} is not a file")
        file_format(path, cfg.format)
    return [Path(p) for p in paths]


def _hf_documents(cfg: DatasetConfig) -> Documents:
    import datasets

    from . import hub

    split, spec = f"{cfg.split}{cfg.slice or ''}", None
    where = f"dataset {cfg.path!r}" + (f" ({cfg.config_name})" if cfg.config_name else "") + f" split {split!r}"
    try:
        local = Path(cfg.path).expanduser()
        if local.is_dir() and any((local / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(local))  # a save_to_disk directory
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.split]
            split, spec = cfg.split, cfg.slice  # sliced as documents below
        else:
            kwargs: dict[str, Any] = {}
            if cfg.data_files is not None:
                from omegaconf import OmegaConf

                files = cfg.data_files
                kwargs["data_files"] = OmegaConf.to_container(files) if OmegaConf.is_config(files) else files
            if not datasets.config.HF_HUB_OFFLINE:
                hub.reachable()  # once per process; no answer switches datasets to offline mode: cache only, no retries
            ds = datasets.load_dataset(cfg.path, cfg.config_name, split=split, **kwargs)
    except DataError:
        raise
    except (FileNotFoundError, ConnectionError) as exc:
        offline = f" ({hub.why_offline('HF_DATASETS_OFFLINE')})" if datasets.config.HF_HUB_OFFLINE else ""
        raise DataError(f"{where} is not available locally{offline}: {one_line(exc, 300)}; cache it first, or use "
                        "dataset=local / dataset=builtin") from None
    except (ValueError, KeyError, OSError, IndexError) as exc:
        raise DataError(f"{where}: {one_line(exc, 300)}") from None
    except Exception as exc:  # datasets wraps builder failures in its own exception types (DatasetGenerationError, ...)
        raise DataError(f"{where}: {type(exc).__name__}: {one_line(exc, 300)}") from None
    if cfg.field not in ds.column_names:
        raise DataError(f"{where}: no column {cfg.field!r} (columns: {', '.join(ds.column_names[:8])}); set dataset.field")
    column = ds.select_columns([cfg.field])

    def rows() -> Iterator[str]:  # arrow batches from the memory-mapped cache: nothing is held beyond one batch
        for batch in column.iter(batch_size=256):
            yield from (d for d in batch[cfg.field] if isinstance(d, str) and d.strip())

    return Documents(rows, spec, where, f"{where} is empty (no non-blank {cfg.field!r} values)")


# Tokens near the end of a cut-off text may merge with what follows it; this many are dropped after such a cut.
CUT_MARGIN = 64


def tokenize(docs: Iterable[str], tokenizer, seq_len: int, where: str, max_tokens: int | None = None) -> Blocks:
    """Pack the documents into blocks. With `max_tokens` (seq_len x batch_size x max_batches), documents are tokenized
    in order only until that many tokens are there, and a long document only as far as needed: memory does not grow
    with the file. The blocks are the leading blocks of the whole stream, so a capped run sees what an uncapped one
    sees first."""
    import torch

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    starts: list[int] = []

    def add(ids: list[int], complete: bool = True) -> None:
        starts.append(len(stream))
        if bos is not None:
            stream.append(bos)
        stream.extend(ids)
        if eos is not None and complete:
            stream.append(eos)

    group: list[str] = []
    group_chars = 0

    def flush() -> None:
        nonlocal group_chars
        if group:
            for ids in tokenizer(group, add_special_tokens=False)["input_ids"]:
                add(ids)
            group.clear()
            group_chars = 0

    documents = characters = 0
    for doc in docs:
        documents, characters = documents + 1, characters + len(doc)
        if max_tokens is None:
            group.append(doc)
            if len(group) >= 256:
                flush()
            continue
        # characters that surely hold the tokens still missing (a token is rarely longer than 4 characters... and
        # when it is, the prefix below grows until it has them)
        budget = 4 * max(max_tokens - len(stream), 0) + 16_384
        if group_chars + len(doc) <= budget:
            group.append(doc)
            group_chars += len(doc)
            continue
        flush()
        if len(stream) >= max_tokens:
            break
        ids, complete = _leading_ids(doc, tokenizer, max_tokens - len(stream), budget)
        add(ids, complete)
        if len(stream) >= max_tokens:
            break
    flush()
    n = len(stream) // seq_len
    if max_tokens is not None:
        n = min(n, max_tokens // seq_len)
    if n == 0:
        raise DataError(f"{where}: {len(stream)} tokens is less than one block of seq_len={seq_len}; "
                        "use a larger slice or a smaller seq_len")
    ids = torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return Blocks(ids=ids, documents=documents, characters=characters, tokens_total=len(stream),
                  doc_starts=[s for s in starts if s < n * seq_len])


def _leading_ids(text: str, tokenizer, want: int, size: int) -> tuple[list[int], bool]:
    """The first >= `want` token ids of `text` (all of them, and True, when the text is shorter than that), tokenizing
    growing prefixes; the CUT_MARGIN tokens before a cut are dropped, so the ids equal the whole text's leading ids."""
    while size < len(text):
        ids = tokenizer(text[:size], add_special_tokens=False)["input_ids"]
        if len(ids) >= want + CUT_MARGIN:
            return ids[: len(ids) - CUT_MARGIN], False
        size *= 2
    return tokenizer(text, add_special_tokens=False)["input_ids"], True


def describe(cfg: DatasetConfig) -> str:
    """Where the documents came from, in full: path[/config]:split[slice] [data files], or path[slice]."""
    if cfg.kind is DatasetKind.hf:
        files = f" {','.join(_data_files(cfg))}" if cfg.data_files is not None else ""
        return f"{cfg.path}" + (f"/{cfg.config_name}" if cfg.config_name else "") + f":{cfg.split}{cfg.slice or ''}" + files
    if cfg.kind is DatasetKind.local:
        return f"{cfg.path}{cfg.slice or ''}"
    if cfg.kind is DatasetKind.pydoc:
        return f"pydoc_data.topics:{cfg.split}{cfg.slice or ''}"
    return f"builtin{cfg.slice or ''}"


def label(cfg: DatasetConfig) -> str:
    """The short `dataset` label of the results: dataset.name, else what was loaded (builtin; the file name for local
    files; the hub id's name, config and data file names for hf), so that two different sources never share one."""
    if cfg.name:
        return cfg.name
    if cfg.kind is DatasetKind.builtin:
        return "builtin"
    if cfg.kind is DatasetKind.pydoc:
        return f"pydoc_{cfg.split}"
    if cfg.kind is DatasetKind.local:
        return _slug(Path(cfg.path).name)
    files = [Path(f).name for f in _data_files(cfg)] if cfg.data_files is not None else []
    return _slug("-".join([Path(cfg.path.rstrip("/")).name, *filter(None, [cfg.config_name]), *files]))


def _data_files(cfg: DatasetConfig) -> list[str]:
    from omegaconf import OmegaConf

    files = OmegaConf.to_container(cfg.data_files) if OmegaConf.is_config(cfg.data_files) else cfg.data_files
    if isinstance(files, dict):  # {split: files}
        files = [f for value in files.values() for f in ([value] if isinstance(value, str) else value)]
    return [files] if isinstance(files, str) else [str(f) for f in files]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "dataset"
