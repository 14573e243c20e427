"""The integration snippets of docs/integrations.md (and the README's install command) run as written,
and produce what they claim.

Python blocks run in-process, or under torchrun when their first line says so; bash blocks run
from the repository root (with a rendezvous on a free port, and DeepSpeed's CPU kernel build skipped:
see without_shm_kernel.py).
"""
from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest
from doc_blocks import section
from launching import HERE, REPO, TORCHRUN, accelerate_launch, check_training_log, run_command

import random_ltd

PAGE = "docs/integrations.md"


def readme_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", section(PAGE, "integrations"), flags=re.S)


def block(kind: str) -> str:
    matches = [code for language, code in readme_blocks() if _kind(language, code) == kind]
    assert len(matches) == 1, f"expected one {PAGE} block for {kind}"
    return matches[0]


def _kind(language: str, code: str) -> str:
    if language == "python":
        if "torchrun" in code.splitlines()[0]:
            return "torchrun"
        return next((kind for kind in ("lightning", "peft") if f"import {kind}" in code), "trainer")
    if "--report-to" in code:
        return "trackers"
    return "accelerate" if code.startswith("accelerate launch") else "deepspeed"


def test_every_block_is_checked():
    assert sorted(_kind(*b) for b in readme_blocks()) == [
        "accelerate", "deepspeed", "lightning", "peft", "torchrun", "trackers", "trainer"]


def test_trainer_snippet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block("trainer"), f"{PAGE} trainer snippet", "exec"), namespace)
    schedule = namespace["schedule"].resolve(total_steps=10)
    logged = [log for log in namespace["trainer"].state.log_history if "loss" in log]
    assert [log["random_ltd/kept_len"] for log in logged] == [schedule(4), schedule(9)] == [80, 128]
    assert random_ltd.get_handle(namespace["model"]).drop_layers == [1, 2]


def test_torchrun_snippet(tmp_path):
    script = tmp_path / "ddp_min.py"
    script.write_text(block("torchrun"))
    done = run_command([*TORCHRUN, "--nproc-per-node=2", str(script)], cwd=tmp_path)
    metrics = {int(rank): ast.literal_eval(values)
               for rank, values in re.findall(r"rank (\d): (\{[^{}]*\})", done.stdout)}
    assert sorted(metrics) == [0, 1] and metrics[0] == metrics[1]
    kept = [32, 32, 64, 64, 96, 96]
    assert metrics[0]["random_ltd/kept_len"] == 96
    assert metrics[0]["random_ltd/layer_tokens"] == sum(16 * (2 * 128 + 2 * k) for k in kept)


def test_accelerate_command():
    command = shlex.split(block("accelerate").strip())
    assert command[:2] == ["accelerate", "launch"]
    done = accelerate_launch(*command[2:])
    schedule = random_ltd.MSLG(seq_len=128, start=32, increment=16, full_at=0.7, total_steps=6)
    rows = check_training_log(done.stdout, schedule, steps=6, batch_size=4 * 2 * 2, num_layers=6,
                              drop_layers=[1, 2, 3, 4])
    assert rows[-1][4] == 0.0  # the LayerToken LR decayed to zero exactly at the planned budget


def test_deepspeed_command():
    pytest.importorskip("deepspeed")
    command = shlex.split(block("deepspeed").strip())
    script = next(i for i, token in enumerate(command) if token.endswith(".py"))
    assert command[0] == "torchrun"
    done = run_command([*TORCHRUN, *command[1:script], str(HERE / "without_shm_kernel.py"), *command[script:]],
                       timeout=240)
    settings = random_ltd.from_deepspeed_config(REPO / "examples" / "deepspeed_config.json")
    steps = int(command[command.index("--steps") + 1])
    rows = check_training_log(done.stdout, settings.schedule, steps=steps, batch_size=8, num_layers=6,
                              drop_layers=settings.layer_ids)
    assert rows[-1][2] == settings.seq_len


def test_lightning_snippet(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_lightning"}
    exec(compile(block("lightning"), f"{PAGE} Lightning snippet", "exec"), namespace)
    trainer = namespace["trainer"]
    schedule = namespace["schedule"].resolve(total_steps=10)
    kept = [schedule(step) for step in range(10)]
    assert kept[-1] == 128 and kept[0] == 32
    metrics = {name: float(value) for name, value in trainer.logged_metrics.items()}
    assert metrics["random_ltd/kept_len"] == 128
    assert metrics["random_ltd/layer_tokens"] == sum(4 * 2 * (2 * 128 + 2 * k) for k in kept)
    assert metrics["random_ltd/lr"] == 0.0  # the LayerToken LR reached the end of its budget with the run
    assert random_ltd.get_handle(trainer.lightning_module.model).drop_layers == [1, 2]


def test_trackers_command(tmp_path, monkeypatch):
    """Run in-process (the environment assignments set, then the command's arguments to the CLI's main)."""
    for module in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(module)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from random_ltd.cli import main

    words = shlex.split(block("trackers").strip())
    while "=" in words[0]:
        monkeypatch.setenv(*words.pop(0).split("=", 1))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    assert words[0] == "random-ltd" and main(words[1:] + ["--no-progress"]) == 0
    out = tmp_path / "runs" / "tracked"
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [event.step for event in events.Scalars("random_ltd/seed0/kept")] == [1, 2, 3, 4]
    assert "summary/comparison/layer_tokens_saving" in events.Tags()["scalars"]
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert len(list((tmp_path / "mlruns").glob("*/*/metrics/random_ltd/seed0/kept"))) == 1


def test_peft_snippet():
    pytest.importorskip("peft")
    namespace: dict = {}
    exec(compile(block("peft"), f"{PAGE} PEFT snippet", "exec"), namespace)
    handle, model = namespace["handle"], namespace["model"]
    assert handle.drop_layers == [1, 2] and handle.keep == 32
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in name for name in with_grad)
    assert repr(handle).startswith("RandomLTDHandle(stack='base_model.model.transformer.h', layers=[1, 2] of 4")


def test_version_command():
    (install,) = re.findall(r"```bash\n(.*?)```", section("README.md", "install"), flags=re.S)
    command = shlex.split(install.strip())
    done = run_command([str(Path(sys.executable).parent / command[0]), *command[1:]])
    assert done.stdout.strip() == f"random-ltd {random_ltd.__version__}"
