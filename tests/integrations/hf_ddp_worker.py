"""Run under ``torchrun --nproc-per-node 2``: the Trainer with RandomLTDCallback under DDP (gloo, CPU).

Trains 4 steps (checkpoint at step 2), then resumes a fresh model from that checkpoint. Rank 0
writes what every rank measured to ``--out``: the token indices the first dropping layer kept at
step 0, seeds before and after resume, kept lengths logged, and the parameters of every rank.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
import transformers

import random_ltd
from random_ltd.integrations.distributed import exit_process
from random_ltd.integrations.hf import RandomLTDCallback, RandomLTDTrainer

SEQ, VOCAB = 32, 101


class TokenData(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "labels": ids}


class TrainLogs(transformers.TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.logs.append({key: logs[key] for key in ("loss", "learning_rate", "random_ltd/kept_len")})


def kept_indices_probe(model) -> list:
    """Positions the first dropping layer kept, found by matching its sub-layer's input rows."""
    layer, found, full = model.transformer.h[1], [], {}
    layer.register_forward_pre_hook(lambda module, args: full.setdefault("hidden", args[0].detach()))
    layer.ln_1.register_forward_hook(lambda module, args, out: found.append(_match(full["hidden"], args[0].detach())))
    return found


def _match(full: torch.Tensor, kept: torch.Tensor) -> list[list[int]]:
    return [[int((row == sequence).all(-1).nonzero()[0]) for row in rows]
            for sequence, rows in zip(full, kept, strict=True)]


def train(out: str, resume: str | None) -> dict:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    probe, logged = kept_indices_probe(model), TrainLogs()
    callback = RandomLTDCallback(random_ltd.MSLG(seq_len=SEQ, start=8, increment=8, every_steps=1),
                                 layer_token_lr=True, seed=7)
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=4, per_device_train_batch_size=2, logging_steps=1, save_strategy="steps",
        save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True, learning_rate=1e-2, seed=0)
    trainer = RandomLTDTrainer(model=model, args=args, train_dataset=TokenData(), callbacks=[logged, callback])
    trainer.train(resume_from_checkpoint=resume)
    handle = random_ltd.get_handle(model)
    return {"seed": handle.seed, "logs": logged.logs, "first_kept_indices": probe[0] if probe else None,
            "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    whole = train(args.dir, None)
    resumed = train(args.dir, f"{args.dir}/checkpoint-2")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"whole": whole, "resumed": resumed})
    if dist.get_rank() == 0:
        with open(args.out, "w") as file:
            json.dump({"world_size": dist.get_world_size(), "ranks": gathered}, file)


if __name__ == "__main__":
    main()
    exit_process()
