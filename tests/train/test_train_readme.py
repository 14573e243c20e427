"""The `train` commands of the README and docs/training.md: the Python example runs as written, the commands parse."""
from __future__ import annotations

import re
import shlex

from doc_blocks import section, text

from random_ltd.cli import build_parser

PAGE = "docs/training.md"


def test_python_example_runs(tmp_path, monkeypatch, cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANDOM_LTD_CACHE", str(cache))
    (block,) = re.findall(r"```python\n(.*?)```", section(PAGE, "train"), flags=re.S)
    namespace: dict = {}
    exec(compile(block, f"{PAGE} train example", "exec"), namespace)
    assert 0 < namespace["summary"]["comparison"]["layer_tokens_saving"] < 1
    assert (tmp_path / "runs" / "api-example" / "report.md").exists()


def test_shell_examples_parse():
    parser = build_parser()
    shown = section(PAGE, "train") + section("README.md", "main-job")
    commands = [line.split("#")[0].strip() for line in re.findall(r"^random-ltd train.*$", shown, flags=re.M)]
    assert len(commands) >= 12
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.command == "train"


def test_quick_start_runs_the_main_job():
    quick_start = text("README.md").split("## Quick start")[1].split("```bash\n")[1].split("```")[0]
    assert quick_start.strip().endswith("random-ltd train")
