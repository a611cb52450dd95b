"""Dataset slices -> documents -> token blocks of exactly `seq_len` tokens (packed, no padding).

Documents are joined as <bos> doc <eos> <bos> doc <eos> ... (tokenizer's specials where it has them) and the stream is
cut into blocks of seq_len; the incomplete tail is dropped. Every target in a block is a real next token, so the loss
is the mean NLL over all B * (seq_len - 1) positions of a batch.
"""
from __future__ import annotations

import glob
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .schema import DatasetConfig, DatasetKind

log = logging.getLogger(__name__)


@dataclass
class Blocks:
    ids: Any  # LongTensor [num_blocks, seq_len]
    documents: int
    characters: int
    tokens_total: int  # tokens before the tail was dropped

    @property
    def num_blocks(self) -> int:
        return int(self.ids.shape[0])


def apply_slice(items: list, spec: str | None, what: str) -> list:
    """Python / datasets slice syntax on a list: "[:64]", "[10:20]", "[-5:]", "[:10%]"."""
    if spec is None:
        return items
    match = re.match(r"^\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\]$", spec)
    if match is None:
        raise DataError(f"dataset.slice {spec!r} is not a slice such as '[:64]' or '[:10%]'")

    def bound(text: str | None) -> int | None:
        if text is None:
            return None
        if text.endswith("%"):
            return round(len(items) * int(text[:-1]) / 100)
        return int(text)

    start, stop = bound(match.group(1)), bound(match.group(2))
    picked = items[start:stop]
    if not picked:
        raise DataError(f"dataset slice {spec} of {what} is empty ({len(items)} documents available)")
    return picked


def load_documents(cfg: DatasetConfig) -> list[str]:
    if cfg.kind is DatasetKind.builtin:
        from .corpus import TEXT

        docs = [p.strip() for p in TEXT.split("\n\n") if p.strip()]
        return apply_slice(docs, cfg.slice, "the built-in text")
    if cfg.kind is DatasetKind.local:
        docs = _local_documents(cfg)
        if not docs:
            raise DataError(f"dataset.path {cfg.path!r} has no text (empty or whitespace only"
                            f"{'' if _format(Path(cfg.path), cfg.format) == 'text' else f', or no non-blank {cfg.field!r} values'}); "
                            "point dataset.path at a file with text")
        return apply_slice(docs, cfg.slice, cfg.path)
    return _hf_documents(cfg)


def _local_documents(cfg: DatasetConfig) -> list[str]:
    pattern = str(Path(cfg.path).expanduser())
    paths = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    if not paths:
        raise DataError(f"dataset.path {cfg.path!r} matches no files")
    docs: list[str] = []
    for path in paths:
        docs.extend(_read_file(Path(path), cfg))
    return docs


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".json", ".parquet"):
        return suffix[1:]
    if suffix in (".txt", ".md", ".text", ""):
        return "text"
    raise DataError(f"{path}: cannot tell the format from the extension {suffix!r}; set dataset.format")


def _field(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        keys = ", ".join(sorted(map(str, record))[:8])
        raise DataError(f"{where}: no field {field!r} (fields: {keys}); set dataset.field")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, not text")
    return value


def _read_file(path: Path, cfg: DatasetConfig) -> list[str]:
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    if not path.is_file():
        raise DataError(f"dataset path {path} is not a file")
    fmt = _format(path, cfg.format)
    try:
        if fmt == "jsonl":
            return _jsonl_documents(path, cfg)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on corrupt files
                raise DataError(f"{path}: not a readable parquet file ({' '.join(str(exc).split())[:200]})") from None
            if cfg.field not in table.column_names:
                raise DataError(f"{path}: no column {cfg.field!r} (columns: {', '.join(table.column_names[:8])}); "
                                "set dataset.field")
            return [v for v in table.column(cfg.field).to_pylist() if isinstance(v, str) and v.strip()]
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if fmt == "text":
        return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    data = _parse_json(text, str(path), "JSON")
    del text
    if isinstance(data, dict) and isinstance(data.get(cfg.field), list):  # {"text": [...]} columns
        data = [{cfg.field: v} for v in data[cfg.field]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects with a {cfg.field!r} field")
    return [d for d in (_field(r, cfg.field, f"{path}[{i}]") for i, r in enumerate(data)) if d.strip()]


def _parse_json(text: str, where: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f" at line {exc.lineno}" if what == "JSON" else ""
        raise DataError(f"{where}: malformed {what} ({exc.msg}{at})") from None
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        raise DataError(f"{where}: JSON nested too deeply to read (over ~{sys.getrecursionlimit()} levels); "
                        "flatten it to records with a text field") from None


def _jsonl_documents(path: Path, cfg: DatasetConfig) -> list[str]:
    """One record per line, read line by line (a large file is never held twice)."""
    docs = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = _parse_json(line, f"{path}:{number}", "JSON line")
            del line
            text = _field(record, cfg.field, f"{path}:{number}")
            if text.strip():
                docs.append(text)
    return docs


def _hf_documents(cfg: DatasetConfig) -> list[str]:
    import datasets

    from . import hub

    split = f"{cfg.split}{cfg.slice or ''}"
    where = f"dataset {cfg.path!r}" + (f" ({cfg.config_name})" if cfg.config_name else "") + f" split {split!r}"
    try:
        local = Path(cfg.path).expanduser()
        if local.is_dir() and any((local / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(local))  # a save_to_disk directory
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.split]
            ds = _slice_dataset(ds, cfg.slice, where)
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
        raise DataError(f"{where} is not available locally{offline}: {_short(exc)}; cache it first, or use "
                        "dataset=local / dataset=builtin") from None
    except (ValueError, KeyError, OSError, IndexError) as exc:
        raise DataError(f"{where}: {_short(exc)}") from None
    except Exception as exc:  # datasets wraps builder failures in its own exception types (DatasetGenerationError, ...)
        raise DataError(f"{where}: {type(exc).__name__}: {_short(exc)}") from None
    if cfg.field not in ds.column_names:
        raise DataError(f"{where}: no column {cfg.field!r} (columns: {', '.join(ds.column_names[:8])}); set dataset.field")
    docs = [d for d in ds[cfg.field] if isinstance(d, str) and d.strip()]
    if not docs:
        raise DataError(f"{where} is empty (no non-blank {cfg.field!r} values)")
    return docs


def _slice_dataset(ds, spec: str | None, where: str):
    if spec is None:
        return ds
    rows = apply_slice(list(range(len(ds))), spec, where)
    return ds.select(rows)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# Tokens near the end of a cut-off text may merge with what follows it; this many are dropped after such a cut.
CUT_MARGIN = 64


def tokenize(docs: list[str], tokenizer, seq_len: int, where: str, max_tokens: int | None = None) -> Blocks:
    """Pack the documents into blocks. With `max_tokens` (seq_len x batch_size x max_batches), documents are tokenized
    in order only until that many tokens are there, and a long document only as far as needed: memory does not grow
    with the file. The blocks are the leading blocks of the whole stream, so a capped run sees what an uncapped one
    sees first."""
    import torch

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []

    def add(ids: list[int], complete: bool = True) -> None:
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

    for doc in docs:
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
    return Blocks(ids=ids, documents=len(docs), characters=sum(map(len, docs)), tokens_total=len(stream))


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
    return f"builtin{cfg.slice or ''}"


def label(cfg: DatasetConfig) -> str:
    """The short `dataset` label of the results: dataset.name, else what was loaded (builtin; the file name for local
    files; the hub id's name, config and data file names for hf), so that two different sources never share one."""
    if cfg.name:
        return cfg.name
    if cfg.kind is DatasetKind.builtin:
        return "builtin"
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
