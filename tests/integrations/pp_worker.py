"""Run under ``torchrun --nproc-per-node 2``: random-LTD in two pipeline stages (gloo, CPU).

A tiny 6-layer Llama is split into two stages of three layers (``torch.distributed.pipelining``,
GPipe or 1F1B, 4 microbatches, optionally with activation checkpointing of every layer); layers
1..4 drop tokens (``apply_to_stage``, the whole stack's ``"1:-1"``). Two optimizer steps with the
kept length set once per step by a ``Driver`` on each stage. Every dropping layer's kept indices
are recorded (the ``position_ids`` its attention receives), and rank 0 replays them in an unsplit
single-process reference: each dropping layer is the original layer run on the gathered tokens,
scattered back, summed over microbatches. Rank 0 writes both to ``--out``.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import transformers
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from torch.utils.checkpoint import checkpoint
from worker_output import finish

import random_ltd
from random_ltd.integrations.pipeline import apply_to_stage

SEQ, MICRO, N_MICRO, VOCAB, LAYERS, STEPS, SEED = 16, 2, 4, 64, 6, 2, 2024
SCHEDULE = random_ltd.MSLG(seq_len=SEQ, start=8, increment=4, every_steps=1)  # 8, 12 in the two steps
SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def build_model() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                                      attn_implementation="sdpa", tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).train()


class Stage(nn.Module):
    """Layers ``first..last-1`` of ``llama`` (with the embedding on the first stage, norm and head on the last)."""

    def __init__(self, llama: transformers.LlamaForCausalLM, first: int, last: int, use_checkpoint: bool):
        super().__init__()
        self.embed = llama.model.embed_tokens if first == 0 else None
        self.rotary = llama.model.rotary_emb
        self.layers = nn.ModuleList(llama.model.layers[first:last])
        self.head = nn.Sequential(llama.model.norm, llama.lm_head) if last == LAYERS else None
        self.use_checkpoint = use_checkpoint

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(inputs) if self.embed is not None else inputs
        positions = torch.arange(hidden.shape[1]).expand(hidden.shape[0], -1)
        rotary = self.rotary(hidden, positions)
        for layer in self.layers:
            if self.use_checkpoint:
                hidden = checkpoint(layer, hidden, position_ids=positions, position_embeddings=rotary,
                                    use_reentrant=False)
            else:
                hidden = layer(hidden, position_ids=positions, position_embeddings=rotary)
        return hidden if self.head is None else self.head(hidden)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(10 + step)
    ids = torch.randint(0, VOCAB, (MICRO * N_MICRO, SEQ + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:]


def record_kept(stage: Stage, first: int, forward_log: list, replay_log: list) -> None:
    """Dropping layers' kept indices: positions seen by their attention; a checkpoint's recompute goes apart."""
    for offset, layer in enumerate(stage.layers):
        def hook(module, args, kwargs, position=first + offset):
            in_backward = torch._C._current_graph_task_id() != -1
            (replay_log if in_backward else forward_log).append((position, kwargs["position_ids"].tolist()))
        layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)


def boundary_examples(rank: int) -> dict:
    """Static stage metadata: no extra metadata-inference forward (it would add an unrecorded draw)."""
    hidden = torch.zeros(MICRO, SEQ, 32, requires_grad=True)
    if rank == 0:
        return {"input_args": torch.zeros(MICRO, SEQ, dtype=torch.long), "output_args": hidden}
    return {"input_args": hidden, "output_args": torch.zeros(MICRO, SEQ, VOCAB)}


def run_pipeline(schedule_name: str, use_checkpoint: bool) -> dict:
    rank = dist.get_rank()
    llama = build_model()
    first, last = (0, LAYERS // 2) if rank == 0 else (LAYERS // 2, LAYERS)
    stage_module = Stage(llama, first, last, use_checkpoint)
    handle = apply_to_stage(stage_module, first_layer=first, num_layers=LAYERS, seed=SEED)
    forward_log, replay_log, boundary = [], [], []
    record_kept(stage_module, first, forward_log, replay_log)
    if rank == 0:
        stage_module.register_forward_hook(lambda module, args, out: boundary.append(list(out.shape)))
    stage = PipelineStage(stage_module, rank, 2, torch.device("cpu"), **boundary_examples(rank))
    schedule = SCHEDULES[schedule_name](stage, n_microbatches=N_MICRO, loss_fn=loss_fn)
    driver = random_ltd.Driver(handle, SCHEDULE, batch_size=MICRO * N_MICRO, seq_len=SEQ)
    optimizer = torch.optim.SGD(llama.parameters(), lr=0.5)
    grads, losses = [], []
    for step in range(STEPS):
        driver.before_step()
        inputs, target = data(step)
        if rank == 0:
            schedule.step(inputs)
        else:
            step_losses: list = []
            schedule.step(target=target, losses=step_losses)
            losses.append([loss.item() for loss in step_losses])
        grads.append({n: p.grad.clone() for n, p in llama.named_parameters() if p.grad is not None})
        optimizer.step()
        optimizer.zero_grad()
        driver.after_step()
    return {"kept": [e for e in forward_log if e[0] in handle.stage_drop_layers],
            "replayed": [e for e in replay_log if e[0] in handle.stage_drop_layers],
            "grads": grads, "losses": losses, "boundary_shapes": boundary, "layer_tokens": driver.layer_tokens,
            "stage_drop_layers": handle.stage_drop_layers, "drop_layers": handle.drop_layers}


def kept_by_layer(kept: list) -> dict[int, list]:
    """``{layer: [indices of step 0 microbatch 0, step 0 microbatch 1, ...]}`` (stages run microbatches in order)."""
    by_layer: dict[int, list] = {}
    for position, indices in kept:
        by_layer.setdefault(position, []).append(torch.tensor(indices))
    return by_layer


def reference(kept: dict[int, list]) -> dict:
    """The unsplit model on the same microbatches, each dropping layer replayed with the recorded indices."""
    llama = build_model()
    optimizer = torch.optim.SGD(llama.parameters(), lr=0.5)
    grads, losses = [], []
    for step in range(STEPS):
        inputs, target = data(step)
        step_losses = []
        for micro in range(N_MICRO):
            rows = slice(micro * MICRO, (micro + 1) * MICRO)
            loss = loss_fn(unsplit_forward(llama, inputs[rows], kept, step * N_MICRO + micro), target[rows])
            (loss / N_MICRO).backward()
            step_losses.append(loss.item())
        losses.append(step_losses)
        grads.append({n: p.grad.clone() for n, p in llama.named_parameters()})
        optimizer.step()
        optimizer.zero_grad()
    return {"grads": grads, "losses": losses}


def unsplit_forward(llama, inputs: torch.Tensor, kept: dict[int, list], call: int) -> torch.Tensor:
    hidden = llama.model.embed_tokens(inputs)
    positions = torch.arange(SEQ).expand(inputs.shape[0], -1)
    cos, sin = llama.model.rotary_emb(hidden, positions)
    for position, layer in enumerate(llama.model.layers):
        if position not in kept:
            hidden = layer(hidden, position_ids=positions, position_embeddings=(cos, sin))
            continue
        index = kept[position][call]
        take = lambda t, index=index: torch.gather(t, 1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
        short = layer(take(hidden), position_ids=index, position_embeddings=(take(cos), take(sin)))
        hidden = hidden.scatter(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]), short)
    return llama.lm_head(llama.model.norm(hidden))


def compare(runs: list[dict]) -> dict:
    kept = {**kept_by_layer(runs[0]["kept"]), **kept_by_layer(runs[1]["kept"])}
    ref = reference(kept)
    grad_diff = max((run["grads"][s][n] - ref["grads"][s][n]).abs().max().item()
                    for run in runs for s in range(STEPS) for n in run["grads"][s])
    covered = sorted({n for run in runs for n in run["grads"][0]})
    return {
        "max_grad_diff": grad_diff, "max_grad": max(g.abs().max().item() for g in ref["grads"][0].values()),
        "all_params_covered": covered == sorted(ref["grads"][0]),
        "losses": runs[1]["losses"], "reference_losses": ref["losses"],
        "kept_lengths": {str(p): [len(i[0]) for i in v] for p, v in kept.items()},
        "microbatches_draw_apart": all(len({json.dumps(i.tolist()) for i in v}) == len(v) for v in kept.values()),
        "replay_matches": [sorted(map(json.dumps, run["replayed"])) == sorted(map(json.dumps, run["kept"]))
                           for run in runs if run["replayed"]],
        "replayed_counts": [len(run["replayed"]) for run in runs],
        "boundary_shapes": runs[0]["boundary_shapes"],
        "layer_tokens": [run["layer_tokens"] for run in runs],
        "stage_drop_layers": [run["stage_drop_layers"] for run in runs], "drop_layers": runs[0]["drop_layers"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--modes", default="gpipe,1f1b,gpipe+checkpoint,1f1b+checkpoint")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    results = {}
    for mode in args.modes.split(","):
        schedule_name, _, extra = mode.partition("+")
        run = run_pipeline(schedule_name, use_checkpoint=extra == "checkpoint")
        gathered: list = [None, None]
        dist.gather_object(run, gathered if dist.get_rank() == 0 else None, dst=0)
        if dist.get_rank() == 0:
            results[mode] = compare(gathered)
    finish(results, args.out)


if __name__ == "__main__":
    main()
