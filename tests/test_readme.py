"""The README is a front page: its example runs, its commands are the CI's, its results are the results page's."""
from __future__ import annotations

import re

import pytest
from doc_blocks import REPO, pages, python_blocks, section, text

FRONT_PAGE_LINES = 200


def core_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", section("README.md", "core"), flags=re.S)


@pytest.mark.parametrize("index", range(len(core_examples())))
def test_core_examples_run(index):
    namespace: dict = {}
    exec(compile(core_examples()[index], f"README core example {index}", "exec"), namespace)
    assert namespace["handle"].drop_layers == [1, 2, 3, 4][: namespace["handle"].num_layers - 2]


def quick_start_commands() -> list[str]:
    quick_start = text("README.md").split("## Quick start")[1].split("\n## ")[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quick_start, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command_under_ci():
    test_command = quick_start_commands()[1]
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command.endswith("python -m pytest -q")
    assert ci_lines[-1] == test_command
    assert any(line.startswith("export CI=true") for line in ci_lines[:-1])  # missing-dependency skips fail


def test_readme_test_command_installs_fashion_mnist_when_missing():
    test_command = quick_start_commands()[1]
    assert "{ test -d /usr/share/datasets/fashion-mnist || { apt-get update && apt-get install -y " \
           "dataset-fashion-mnist; }; }" in test_command


def test_the_two_set_up_commands_come_first():
    readme = text("README.md")
    assert readme.index("## Quick start") < readme.index("```")
    assert quick_start_commands()[0].endswith("random-ltd train") and len(quick_start_commands()) == 2


def test_readme_is_a_front_page():
    assert len(text("README.md").splitlines()) <= FRONT_PAGE_LINES
    assert len(python_blocks("README.md")) == len(core_examples()) == 1  # the example; the rest is in docs/


def test_readme_links_every_docs_page():
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", text("README.md")))
    assert linked == set(pages()) - {"README.md"}


def results_rows() -> list[str]:
    results = text("README.md").split("\n## Results\n")[1].split("\n## ")[0]
    return [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| §")]


def test_results_table_rows_are_the_results_page_rows():
    page = text("docs/results.md").splitlines()
    rows = results_rows()
    assert len(rows) >= 8
    for row in rows:
        assert row.replace("](docs/results.md#", "](#") in page, f"not a row of docs/results.md: {row}"


def test_results_counts_are_the_results_page_counts():
    (counts,) = re.findall(r"^\d+ claims judged: .*?at this scale\.$", text("docs/results.md"), flags=re.M)
    results = " ".join(text("README.md").split("\n## Results\n")[1].split("\n## ")[0].split())
    assert counts in results
