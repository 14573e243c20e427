"""Every Python block of README.md and docs/*.md runs as written, or says why not.

A block marked ``run by`` is run by the named test, which checks what the block claims; an
unmarked block runs here, each page's unmarked blocks in order in one namespace (as a reader
would paste them); ``not run`` needs a reason. See tests/doc_blocks.py.
"""
from __future__ import annotations

import re

import pytest
from doc_blocks import REPO, pages, python_blocks

BLOCKS = [block for page in pages() for block in python_blocks(page)]
UNMARKED_PAGES = sorted({block.page for block in BLOCKS if not block.check})


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{block.page}:{block.line}" for block in BLOCKS])
def test_every_block_is_run_or_says_why_not(block):
    if block.check == "not run":
        assert len(block.detail.split()) >= 4, f"{block.page}:{block.line}: say why the block is not run"
    elif block.check == "run by":
        path, _, name = block.detail.partition("::")
        test_file = REPO / path
        assert test_file.is_file(), f"{block.page}:{block.line}: no test file {path}"
        source = test_file.read_text()
        assert re.search(rf"^def {re.escape(name)}\(", source, flags=re.M), f"{path} has no test {name}"
        assert block.page.rsplit("/", 1)[-1] in source, f"{path} does not read {block.page}"


@pytest.mark.parametrize("page", UNMARKED_PAGES)
def test_unmarked_blocks_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.replace('/', '_').replace('.', '_')}"}
    for block in python_blocks(page):
        if not block.check:
            exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)


def test_the_checks_cover_every_page():
    assert "README.md" in pages() and "docs/usage.md" in pages()
    assert UNMARKED_PAGES, "nothing is run here: the generic check would be vacuous"
