"""Local dataset files, streamed: the non-blank documents of one file, a text paragraph, a jsonl line, a JSON list
item or a parquet row batch at a time (a JSON object of columns, {"text": [...]}, is the one form read whole). Every
problem with a file is one DataError line naming the file (and the line or item)."""
from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ..errors import DataError, one_line
from ..config.schema import DatasetConfig


def file_format(path: Path, fmt: str) -> str:
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


def read_file(path: Path, cfg: DatasetConfig) -> Iterator[str]:
    """The non-blank documents of one file, streamed: a text paragraph, a jsonl line, a JSON list item or a parquet
    row batch at a time (a JSON object of columns, {"text": [...]}, is the one form read whole)."""
    fmt = file_format(path, cfg.format)
    try:
        if fmt == "parquet":
            yield from _parquet_documents(path, cfg.field)
            return
        with path.open(encoding="utf-8") as stream:
            if fmt == "text":
                yield from paragraphs(stream)
            elif fmt == "jsonl":
                yield from _jsonl_documents(stream, path, cfg.field)
            else:
                yield from _json_documents(stream, path, cfg.field)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Paragraphs separated by blank (whitespace-only) lines, stripped, one at a time."""
    paragraph: list[str] = []
    for line in itertools.chain(lines, [""]):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).strip()
            paragraph.clear()


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on corrupt files
        raise DataError(f"{path}: not a readable parquet file ({one_line(exc, 200)})") from None
    if field not in file.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(file.schema_arrow.names[:8])}); "
                        "set dataset.field")
    for batch in file.iter_batches(batch_size=256, columns=[field]):
        yield from (v for v in batch.column(0).to_pylist() if isinstance(v, str) and v.strip())


def _parse_json(text: str, where: str, what: str, decode=json.loads) -> Any:
    try:
        return decode(text)
    except json.JSONDecodeError as exc:
        at = f" at line {exc.lineno}" if what == "JSON" else ""
        raise DataError(f"{where}: malformed {what} ({exc.msg}{at})") from None
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        raise DataError(f"{where}: JSON nested too deeply to read (over ~{sys.getrecursionlimit()} levels); "
                        "flatten it to records with a text field") from None


def _jsonl_documents(lines: Iterable[str], path: Path, field: str) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            text = _field(_parse_json(line, f"{path}:{number}", "JSON line"), field, f"{path}:{number}")
            if text.strip():
                yield text


# JSON list files are decoded an item at a time from a buffer that grows only to hold the item being decoded.
_CHUNK = 1 << 20
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_documents(stream: TextIO, path: Path, field: str) -> Iterator[str]:
    buffer = stream.read(_CHUNK)
    while buffer.isspace() and (chunk := stream.read(_CHUNK)):
        buffer += chunk
    head = buffer.lstrip()[:1]
    if not head:
        return  # an empty file: no documents
    if head == "{":  # {"text": [...]}: columns, read whole
        data = _parse_json(buffer + stream.read(), str(path), "JSON")
        if not isinstance(data.get(field), list):
            raise DataError(f"{path}: expected a JSON list of objects with a {field!r} field")
        for i, value in enumerate(data[field]):
            if not isinstance(value, str):
                raise DataError(f"{path}[{i}]: field {field!r} is {type(value).__name__}, not text")
            if value.strip():
                yield value
        return
    if head != "[":
        raise DataError(f"{path}: expected a JSON list of objects with a {field!r} field")
    decoder, pos = json.JSONDecoder(), buffer.index("[") + 1

    def more() -> bool:
        nonlocal buffer, pos
        chunk = stream.read(max(_CHUNK, len(buffer) - pos))  # doubles the unread part: an item is re-parsed O(log) times
        buffer, pos = buffer[pos:] + chunk, 0
        return bool(chunk)

    def next_char() -> str:  # the next non-space character, "" at the end of the file
        nonlocal pos
        while True:
            pos = _JSON_SPACE.match(buffer, pos).end()
            if pos < len(buffer):
                return buffer[pos]
            if not more():
                return ""

    def malformed(why: str) -> DataError:
        return DataError(f"{path}: malformed JSON ({why})")

    index = 0
    while True:
        char = next_char()
        if char == "]":
            pos += 1
            if next_char():
                raise malformed("extra data after the list")
            return
        if index:
            if char != ",":
                raise malformed(f"expected ',' or ']' after item {index - 1}" if char else "the list is not closed")
            pos += 1
            char = next_char()
        if not char:
            raise malformed("the list is not closed")
        while True:
            try:
                record, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if more():
                    continue
                raise malformed(f"item {index}: {exc.msg}") from None
            except RecursionError:
                _parse_json("", f"{path}[{index}]", "JSON", decode=_raise_recursion)
            if end == len(buffer) and more():  # a number or literal may go on in the next chunk
                continue
            break
        text = _field(record, field, f"{path}[{index}]")
        pos, index = end, index + 1
        if text.strip():
            yield text


def _raise_recursion(_: str) -> Any:
    raise RecursionError
