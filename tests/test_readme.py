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


def quick_start_commands() -> list[str]:
    quick_start = README.read_text().split("## Quick start")[1].split("\n## ")[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quick_start, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command_under_ci():
    test_command = quick_start_commands()[1]
    ci_lines = (README.parent / ".ci" / "run").read_text().splitlines()
    assert test_command.endswith("python -m pytest -q")
    assert ci_lines[-1] == test_command
    assert any(line.startswith("export CI=true") for line in ci_lines[:-1])  # missing-dependency skips fail


def test_readme_test_command_installs_fashion_mnist_when_missing():
    test_command = quick_start_commands()[1]
    assert "{ test -d /usr/share/datasets/fashion-mnist || { apt-get update && apt-get install -y " \
           "dataset-fashion-mnist; }; }" in test_command
