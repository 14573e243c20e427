"""The README's Python examples run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"<!-- section: {section} -->")[1].split(f"<!-- /section: {section} -->")[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks("core"))))
def test_core_examples_run(index):
    namespace: dict = {}
    exec(compile(_python_blocks("core")[index], f"README core example {index}", "exec"), namespace)
    assert namespace["handle"].drop_layers == [1, 2, 3, 4][: namespace["handle"].num_layers - 2]
