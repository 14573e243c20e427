"""Run under ``torchrun --nproc-per-node 2``: random-LTD on a tensor-parallel tiny Llama (gloo, CPU).

Modes: ``tp`` (``parallelize_module``: q/k/v/gate/up colwise, o/down rowwise), ``sp`` (the same
plus sequence parallelism: DTensors sharded on the sequence between layers), ``hf_tp_plan``
(transformers' ``from_pretrained(dir, tp_plan="auto")``). Each trains a few steps on one batch
shared by both ranks (a TP group) and records, per step, the loss, the full gradients and the
kept indices of every dropping layer (the ``position_ids`` its attention receives); the same is
computed without torch.distributed on the unsharded model with the same seed. Rank 0 writes
both to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch
import torch.distributed as dist
import transformers
from torch.distributed.device_mesh import init_device_mesh
from worker_output import finish

import random_ltd
from random_ltd.integrations.distributed import rank_seed
from random_ltd.integrations.tensor_parallel import mesh_rank_seed

SEQ, BATCH, VOCAB, BASE_SEED = 32, 2, 96, 77
KEPT = [8, 16, 12]  # multiples of 2 (the SP degree); the last step's 12 checks a change of length


def config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                                    attn_implementation="sdpa", tie_word_embeddings=False)


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config()).train()


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(100 + step))


def record_kept_indices(model: torch.nn.Module, log: list, hidden_types: set) -> None:
    """Log the position ids each layer's attention sees: a dropping layer's kept indices (positions are 0..s-1)."""
    for position, layer in enumerate(model.model.layers):
        def hook(module, args, kwargs, position=position):
            log.append((position, kwargs["position_ids"].tolist()))
        layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
        layer.register_forward_pre_hook(lambda module, args: hidden_types.add(type(args[0]).__name__))


def tp_plan(sequence_parallel: bool) -> tuple[dict, dict]:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel

    layer = {f"self_attn.{n}": ColwiseParallel() for n in ("q_proj", "k_proj", "v_proj")}
    layer |= {"mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel()}
    if not sequence_parallel:
        return layer | {"self_attn.o_proj": RowwiseParallel(), "mlp.down_proj": RowwiseParallel()}, {}
    shard_out = RowwiseParallel(output_layouts=Shard(1), use_local_output=False)
    layer |= {
        "input_layernorm": SequenceParallel(), "post_attention_layernorm": SequenceParallel(),
        "self_attn": PrepareModuleInput(input_kwarg_layouts={"hidden_states": Shard(1)},
                                        desired_input_kwarg_layouts={"hidden_states": Replicate()}),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "self_attn.o_proj": shard_out, "mlp.down_proj": shard_out,
    }
    root = {
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1),
                                              use_local_output=False),
        "model.norm": SequenceParallel(),
        "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    }
    return layer, root


def parallelize(model: torch.nn.Module, mesh, sequence_parallel: bool) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    layer_plan, root_plan = tp_plan(sequence_parallel)
    for layer in model.model.layers:
        parallelize_module(layer, mesh, layer_plan)
    if root_plan:
        parallelize_module(model, mesh, root_plan)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def train(model: torch.nn.Module, handle, steps: int = len(KEPT)) -> dict:
    log: list = []
    hidden_types: set = set()
    record_kept_indices(model, log, hidden_types)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses, grads = [], []
    torch.manual_seed(1)  # the draws hash torch's default stream: alike on a TP group and in the reference
    positions = torch.arange(SEQ).expand(BATCH, SEQ)
    for step in range(steps):
        handle.set_keep(KEPT[step])
        ids = batch(step)
        loss = model(ids, labels=ids, position_ids=positions).loss
        loss.backward()
        grads.append({n: full(p.grad).detach().clone() for n, p in model.named_parameters()})
        optimizer.step()
        optimizer.zero_grad()
        losses.append(full(loss).item())
    return {"losses": losses, "grads": grads, "kept": [entry for entry in log if entry[0] in handle.drop_layers],
            "hidden_types": sorted(hidden_types)}


def compare(run: dict, reference: dict) -> dict:
    grad_diff = max((full(g[n]) - r[n]).abs().max().item()
                    for g, r in zip(run["grads"], reference["grads"], strict=True) for n in r)
    return {"losses": run["losses"], "reference_losses": reference["losses"], "max_grad_diff": grad_diff,
            "max_grad": max(r[n].abs().max().item() for r in reference["grads"] for n in r),
            "same_kept_as_reference": run["kept"] == reference["kept"], "kept": run["kept"],
            "hidden_types": run["hidden_types"], "kept_lengths": sorted({len(k[1][0]) for k in run["kept"]})}


def gather(value):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def run_tp(mode: str, reference: dict) -> dict:
    mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
    model = build_model()
    parallelize(model, mesh["tp"], sequence_parallel=mode == "sp")
    handle = random_ltd.apply(model, seed=mesh_rank_seed(BASE_SEED, mesh, "dp"))
    result = compare(train(model, handle), reference)
    result["kept_same_on_tp_ranks"] = len({json.dumps(k) for k in gather(result["kept"])}) == 1
    return result


def run_sp_indivisible() -> str:
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    model = build_model()
    parallelize(model, mesh, sequence_parallel=True)
    random_ltd.apply(model, keep=7, seed=BASE_SEED)
    ids = batch(0)
    try:
        model(ids, labels=ids)
    except random_ltd.RandomLTDError as error:
        return str(error)
    return "no error"


def run_hf_tp_plan(reference: dict, folder: str) -> dict:
    model = transformers.LlamaForCausalLM.from_pretrained(folder, tp_plan="auto").train()
    handle = random_ltd.apply(model, seed=rank_seed(BASE_SEED, 0))  # both ranks: one TP group, DP index 0
    result = compare(train(model, handle), reference)
    result["sharded"] = any(hasattr(p, "device_mesh") for p in model.parameters())
    result["kept_same_on_tp_ranks"] = len({json.dumps(k) for k in gather(result["kept"])}) == 1
    return result


def seeds_on_meshes() -> dict:
    by_dp = init_device_mesh("cpu", (2, 1), mesh_dim_names=("dp", "tp"))
    by_tp = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
    return {"dp2": gather(mesh_rank_seed(BASE_SEED, by_dp, "dp")),
            "tp2": gather(mesh_rank_seed(BASE_SEED, by_tp, "dp"))}


def reference_run() -> dict:
    model = build_model()
    return train(model, random_ltd.apply(model, seed=rank_seed(BASE_SEED, 0)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--modes", default="tp,sp,sp_indivisible,hf_tp_plan,seeds")
    args = parser.parse_args()
    dist.init_process_group("gloo")

    reference = reference_run()
    folder = tempfile.mkdtemp(prefix="tiny-llama-") if dist.get_rank() == 0 else None
    folder = gather(folder)[0]
    if dist.get_rank() == 0:
        build_model().save_pretrained(folder)
    dist.barrier()
    runs = {"tp": lambda: run_tp("tp", reference), "sp": lambda: run_tp("sp", reference),
            "sp_indivisible": run_sp_indivisible, "hf_tp_plan": lambda: run_hf_tp_plan(reference, folder),
            "seeds": seeds_on_meshes}
    results = {mode: runs[mode]() for mode in args.modes.split(",")}
    finish(results, args.out)


if __name__ == "__main__":
    main()
