"""The fenced code blocks of README.md and docs/*.md, for the tests that run them.

A Python block says how it is checked on the line right above its fence:
``<!-- run by: tests/FILE.py::test_name -->`` (that test runs it and checks what it claims),
``<!-- not run: REASON -->``, or nothing (tests/test_docs.py runs it as written).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- (run by|not run): (.*?) -->")
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: str         # relative to the repository root: README.md, docs/usage.md
    line: int         # of the opening fence, 1-based
    code: str
    check: str        # "run by", "not run" or "" (run by tests/test_docs.py)
    detail: str       # the test that runs it, or why it is not run


def pages() -> list[str]:
    return ["README.md", *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md"))]


def text(page: str) -> str:
    return (REPO / page).read_text()


def section(page: str, name: str) -> str:
    """The text between ``<!-- section: NAME -->`` and ``<!-- /section: NAME -->`` of a page."""
    return text(page).split(f"<!-- section: {name} -->")[1].split(f"<!-- /section: {name} -->")[0]


def python_blocks(page: str) -> list[Block]:
    content = text(page)
    blocks = []
    for match in FENCE.finditer(content):
        before = content[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        check, detail = marker.groups() if marker else ("", "")
        blocks.append(Block(page, content.count("\n", 0, match.start()) + 1, match.group(1), check, detail))
    return blocks
