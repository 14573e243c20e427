"""The README's `train` section: its Python example runs as written, its commands parse."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from random_ltd.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def section(name: str) -> str:
    text = README.read_text()
    return text.split(f"<!-- section: {name} -->")[1].split(f"<!-- /section: {name} -->")[0]


def test_python_example_runs(tmp_path, monkeypatch, cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANDOM_LTD_CACHE", str(cache))
    (block,) = re.findall(r"```python\n(.*?)```", section("train"), flags=re.S)
    namespace: dict = {}
    exec(compile(block, "README train example", "exec"), namespace)
    assert 0 < namespace["summary"]["comparison"]["layer_tokens_saving"] < 1
    assert (tmp_path / "runs" / "api-example" / "report.md").exists()


def test_shell_examples_parse():
    parser = build_parser()
    commands = [line.split("#")[0].strip()
                for line in re.findall(r"^random-ltd train.*$", section("train"), flags=re.M)]
    assert len(commands) >= 8
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.command == "train"


def test_quick_start_runs_the_main_job():
    quick_start = README.read_text().split("## Quick start")[1].split("```bash\n")[1].split("```")[0]
    assert quick_start.strip().endswith("random-ltd train")
