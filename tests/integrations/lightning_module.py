"""A tiny GPT-2 LightningModule and its data, shared by the Lightning tests and their DDP worker."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import transformers

import random_ltd

SEQ, VOCAB = 32, 101


class TinyGPT(pl.LightningModule):
    """Records, for every micro-batch, the optimizer step, the kept length, the LR and the loss."""

    def __init__(self, dropout: float = 0.1, lr: float = 1e-3):
        super().__init__()
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
                                         resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
        self.model = transformers.GPT2LMHeadModel(config)
        self.lr = lr
        self.record: list[dict] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model(input_ids=batch, labels=batch).loss
        self.record.append({"step": self.trainer.global_step,
                            "keep": getattr(random_ltd.get_handle(self.model), "keep", None),
                            "lr": self.trainer.optimizers[0].param_groups[0]["lr"], "loss": loss.item(),
                            "batch": batch[:, 0].tolist()})
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def token_data(sequences: int, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (sequences, SEQ), generator=torch.Generator().manual_seed(seed))


def loader(sequences: int, batch_size: int, shuffle: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(token_data(sequences), batch_size=batch_size, shuffle=shuffle)


def trainer(root, max_steps: int, **settings) -> pl.Trainer:
    """A quiet CPU Trainer that logs every step to ``root``/csv and does no validation."""
    defaults = dict(accelerator="cpu", devices=1, max_steps=max_steps, log_every_n_steps=1, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                    logger=pl.loggers.CSVLogger(root, name="csv", version=0), default_root_dir=root)
    return pl.Trainer(**{**defaults, **settings})


def logged(root) -> list[dict]:
    """The rows of the CSV logger's metrics file that carry random-LTD values."""
    import csv

    with open(f"{root}/csv/version_0/metrics.csv") as stream:
        rows = [row for row in csv.DictReader(stream) if row.get("random_ltd/kept_len")]
    return [{key: float(value) for key, value in row.items() if value != ""} for row in rows]
