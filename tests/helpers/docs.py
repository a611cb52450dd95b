"""The README's and docs' code blocks, for the tests that run them as written."""
from __future__ import annotations

from . import ROOT

README, DOCS = ROOT / "README.md", ROOT / "docs"
DOC_FILES = (README, *sorted(DOCS.glob("*.md")))


def doc_blocks(language: str) -> list[tuple[str, str, str]]:
    """(file relative to the repo, heading, code) of every ```language block of README.md and docs/*.md, in order."""
    blocks = []
    for path in DOC_FILES:
        heading, code = "", None
        for line in path.read_text().splitlines():
            if code is None and line.startswith("#") and not line.startswith("#!"):
                heading = line.lstrip("#").strip()
            elif code is None and line.strip() == f"```{language}":
                code = []
            elif code is not None and line.strip() == "```":
                blocks.append((path.relative_to(ROOT).as_posix(), heading, "\n".join(code)))
                code = None
            elif code is not None:
                code.append(line)
    return blocks
