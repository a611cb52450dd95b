"""The column tables of docs/results.md, generated from the records (their fields, arrow types and meanings).

    python -m runner.results.docs            # rewrite the tables under `### runs`, `### layers`, `### experts`
    python -m runner.results.docs --check    # exit 1 when one is out of date (tests/integration/test_records.py runs this)

The tables list the columns stored in the files; the partition column `model` is described in the text around them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .columns import meanings
from .records import RECORDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "results.md"
HEADER = ("| column | type | meaning |", "|---|---|---|")


def table(name: str) -> list[str]:
    """The markdown lines of one table: a row per column, join keys as they read in that table."""
    rows = meanings(RECORDS[name], joined=name != "runs")
    return [*HEADER, *(f"| `{column}` | {typ} | {meaning} |" for column, typ, meaning in rows)]


def located(lines: Sequence[str], name: str) -> tuple[int, int]:
    """(first, end) line indexes of the table under `### <name>`: its header line up to the first line after it
    that is not a table row."""
    heading = lines.index(f"### {name}")
    first = next(i for i in range(heading + 1, len(lines)) if lines[i] == HEADER[0])
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return first, end


def updated(text: str) -> str:
    """`text` (docs/results.md) with every table regenerated."""
    lines = text.split("\n")
    for name in RECORDS:
        first, end = located(lines, name)
        lines[first:end] = table(name)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = DOC.read_text(encoding="utf-8")
    new = updated(text)
    if "--check" in args:
        if new != text:
            print(f"{DOC}: the column tables are out of date; run `python -m runner.results.docs`", file=sys.stderr)
            return 1
        print(f"{DOC}: column tables up to date")
        return 0
    if new != text:
        DOC.write_text(new, encoding="utf-8")
    print(f"{DOC}: column tables {'rewritten' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
