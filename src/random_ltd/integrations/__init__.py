"""Random-LTD inside the training engines people already use.

- ``random_ltd.integrations.common``: what they share (``ensure_applied``, ``check_seed``, ``StepClock``,
  ``engine_metrics``, ``batch_rows``).
- ``random_ltd.integrations.hf``: ``RandomLTDCallback`` and ``RandomLTDTrainer`` for the Hugging Face ``Trainer``.
- ``random_ltd.integrations.distributed``: per-rank seeds (``apply_on_rank``, ``resume_rank_state``),
  kept-length agreement checks and FSDP2 sharding of the same layers random-LTD wraps (DDP needs nothing else).
- ``random_ltd.integrations.deepspeed``: DeepSpeed JSON configs and engines.
- ``random_ltd.integrations.lightning``: ``RandomLTDCallback`` for the PyTorch Lightning 2.x ``Trainer``.
- ``random_ltd.integrations.tensor_parallel``: seeds on a ``DeviceMesh`` and sequence-parallel DTensors.
- ``random_ltd.integrations.pipeline``: random-LTD in pipeline stages (``torch.distributed.pipelining``).
- ``random_ltd.integrations.torchtitan``: a model converter, per-step hook and LayerToken LR for torchtitan
  (its torchtitan-free pieces in ``torchtitan_parts``).

Each module imports its engine lazily, so importing one never requires the others.
See docs/integrations.md and docs/scale.md.
"""
