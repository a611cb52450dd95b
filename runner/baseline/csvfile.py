"""The baseline file: a tidy long CSV, one value per row, sorted (docs/baselines.md#the-file-format)."""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Iterable, Sequence

from ..files import user_directory, write_atomic
from .entries import BaselineError, Entry, Value

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = ROOT / "tests" / "baselines" / "flops.csv"
COLUMNS = ("key", "model", "k", "selector", "dataset", "metric", "layers", "value", "tolerance")


def _text(value: Value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def dumps(entries: Iterable[Entry]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in sorted(entries, key=Entry.sort_key):
        writer.writerow([e.key, e.model, "" if e.k is None else e.k, e.selector, e.dataset, e.metric, e.layers,
                         _text(e.value), "" if e.tolerance is None else repr(float(e.tolerance))])
    return buffer.getvalue()


def write(path: Path, entries: Sequence[Entry]) -> None:
    keys = [e.key for e in entries]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise RuntimeError(f"duplicate baseline keys: {', '.join(duplicates[:5])}")  # a bug in the entry builders
    user_directory(path.parent, "--file")
    write_atomic(path, dumps(entries), "the baseline")


_INT = re.compile(r"^-?\d+$")
TEXT_METRICS = ("status",)  # the only metrics whose value is a word (ok, failed); all others are numbers


def _parse_value(text: str) -> Value:
    if _INT.match(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def load(path: Path) -> list[Entry]:
    """Read and validate a baseline file; BaselineError (one line naming the file and line) when it is not one."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BaselineError(f"{path}: baseline file not found (create it with `python -m runner.baseline update"
                            f"{'' if path == DEFAULT_FILE else f' --file {path}'}`)") from None
    except IsADirectoryError:
        raise BaselineError(f"{path}: is a directory, not a baseline file") from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{path}: corrupt baseline file: not UTF-8 text (byte {exc.start})") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise BaselineError(f"{path}: corrupt baseline file: {exc}") from None
    if not rows or tuple(rows[0]) != COLUMNS:
        raise BaselineError(f"{path}: corrupt baseline file: the header must be {','.join(COLUMNS)}")
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], 2):
        where = f"{path}:{number}"
        if not row:
            continue
        if len(row) != len(COLUMNS):
            raise BaselineError(f"{where}: corrupt baseline file: {len(row)} fields, expected {len(COLUMNS)}")
        key, model, k, selector, dataset, metric, layers, value, tolerance = row
        if not model or not metric or value == "":
            raise BaselineError(f"{where}: corrupt baseline file: model, metric and value must not be empty")
        if k and not _INT.match(k):
            raise BaselineError(f"{where}: corrupt baseline file: k {k!r} is not an integer")
        if layers and not re.match(r"^\d+(-\d+)?$", layers):
            raise BaselineError(f"{where}: corrupt baseline file: layers {layers!r} is not N or N-M")
        tol = None
        if tolerance:
            try:
                tol = float(tolerance)
            except ValueError:
                tol = -1.0
            if not (math.isfinite(tol) and tol >= 0):
                raise BaselineError(f"{where}: corrupt baseline file: tolerance {tolerance!r} is not a number >= 0")
        parsed = _parse_value(value)
        if isinstance(parsed, str) and metric not in TEXT_METRICS and parsed not in ("true", "false"):
            raise BaselineError(f"{where}: corrupt baseline file: value {value!r} of metric {metric!r} is not a number")
        entry = Entry(model=model, metric=metric, value=parsed, k=int(k) if k else None,
                      selector=selector, dataset=dataset, layers=layers, tolerance=tol)
        if entry.key != key:
            raise BaselineError(f"{where}: corrupt baseline file: key {key!r} does not match its fields "
                                f"(expected {entry.key!r})")
        if key in seen:
            raise BaselineError(f"{where}: corrupt baseline file: duplicate key {key!r} (first on line {seen[key]})")
        seen[key] = number
        entries.append(entry)
    return entries

