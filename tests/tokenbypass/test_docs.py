"""The code in docs/tokenbypass.md runs as written."""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "tokenbypass.md"


def test_usage_block_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    handle_state = namespace["state"]["tokenbypass"]
    assert handle_state["importance"]["updates"] == 3
    assert set(namespace["state"]["model"]) == set(namespace["model"].state_dict())
