"""How a record's fields become the columns of a results table.

A results table is declared once, as a dataclass in records.py: one field per column, in column order. Each field's
annotation gives the column's arrow type, and its metadata (`col(...)`) the column's meaning:

    seq_len: Int32 = col("tokens per block")

The annotations are the aliases below: Python's type where it is precise enough (str -> string, int -> int64,
float -> double, bool -> bool, list[int] -> list<int64>), and `Annotated[<python type>, <arrow type>]` where it is
not (a 32-bit integer, a UTC timestamp). Every column is nullable: a field is None until the job knows its value.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import types
import typing
from typing import Annotated, Any, Optional

import pyarrow as pa

String = Optional[str]
Int32 = Optional[Annotated[int, pa.int32()]]
Int64 = Optional[int]
Double = Optional[float]
Bool = Optional[bool]
Timestamp = Optional[Annotated[dt.datetime, pa.timestamp("us", tz="UTC")]]
Int64List = Optional[list[int]]
Int32ListList = Optional[list[Annotated[list[int], pa.list_(pa.int32())]]]
Int16List = Optional[Annotated[list[int], pa.list_(pa.int16())]]
Float16List = Optional[Annotated[list[float], pa.list_(pa.float16())]]

_PLAIN = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def col(meaning: str, joined: str | None = None, default: Any = None) -> Any:
    """A column: its meaning (one line in docs/results.md) and its default (None: not known yet). `joined`: the
    meaning of a join key in the tables that join back to `runs` (layers, experts) when it reads differently there."""
    return dataclasses.field(default=default, metadata={"meaning": meaning, "joined": joined or meaning})


def arrow_type(hint: Any) -> pa.DataType:
    """The arrow type of one annotation (see the module docstring)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is Annotated:
        return typing.get_args(hint)[1]
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return pa.list_(arrow_type(item))
    if hint in _PLAIN:
        return _PLAIN[hint]
    raise TypeError(f"no arrow type for the annotation {hint!r}; use one of the aliases in {__name__}")


def columns(record: type) -> list[tuple[dataclasses.Field, pa.DataType]]:
    """The record's fields in column order, each with its arrow type."""
    hints = typing.get_type_hints(record, include_extras=True)
    return [(f, arrow_type(hints[f.name])) for f in dataclasses.fields(record)]


def schema_of(record: type) -> pa.Schema:
    """The arrow schema of a record: one nullable column per field, in field order."""
    return pa.schema([(f.name, typ) for f, typ in columns(record)])


def meanings(record: type, joined: bool = False) -> list[tuple[str, str, str]]:
    """(column, arrow type as pyarrow prints it, meaning) per column: the rows of the table in docs/results.md.
    joined: the join keys as they read in a table that joins back to `runs`."""
    return [(f.name, str(typ), f.metadata["joined" if joined else "meaning"]) for f, typ in columns(record)]


def coerce(value: Any, typ: pa.DataType) -> Any:
    """One value as the column type wants it: numpy scalars unwrapped, NaN / NA / NaT as null, a float in an integer
    column as its int (null when it has a fraction)."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (list, tuple)) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    if pa.types.is_integer(typ):
        if isinstance(value, float):
            return int(value) if value.is_integer() else None
        return int(value)
    if pa.types.is_floating(typ):
        return float(value)
    if pa.types.is_boolean(typ):
        return bool(value)
    if pa.types.is_string(typ):
        return str(value)
    if pa.types.is_list(typ):
        return [coerce(v, typ.value_type) for v in value]
    return value
