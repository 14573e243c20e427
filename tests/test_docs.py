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


def anchors(page_text: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens, repeats numbered)."""
    found: set[str] = set(re.findall(r'<a id="([^"]+)"></a>', page_text))
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.*)$", re.sub(r"^```.*?^```", "", page_text, flags=re.S | re.M), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return found


@pytest.mark.parametrize("page", pages())
def test_links_between_pages_resolve(page):
    source = REPO / page
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        assert linked.exists(), f"{page}: link to a missing file {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{page}: no heading for {target}"
