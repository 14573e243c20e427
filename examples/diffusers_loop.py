"""Random-LTD (or TREAD-style span routing) in your own diffusers training loop.

A tiny class-conditional DiT built from a config (no download), trained the way diffusers'
example scripts train: ``DDPMScheduler.add_noise`` and noise prediction, then sampled with a
few DDIM steps. Random-LTD is two additions to such a loop: ``random_ltd.apply`` on the
transformer, and a ``random_ltd.Driver`` around each step (MSLG kept length and the LayerToken
LR). ``--routes`` routes one random half of the image tokens through blocks 1-2 instead
(TREAD); it needs a random-ltd with span routing (``random_ltd.apply(..., routes=...)``).

    python examples/diffusers_loop.py [--steps 8] [--routes]
"""
from __future__ import annotations

import argparse
import inspect

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel

import random_ltd

IMAGE, PATCH, CHANNELS, CLASSES = 16, 2, 4, 10  # 8 x 8 = 64 image tokens


def build() -> DiTTransformer2DModel:
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=CHANNELS, num_layers=4,
                                 sample_size=IMAGE, patch_size=PATCH, num_embeds_ada_norm=CLASSES, norm_num_groups=1)


def batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in latents: each class a different constant per channel, plus a little noise."""
    generator = torch.Generator().manual_seed(step)
    labels = torch.randint(0, CLASSES, (size,), generator=generator)
    levels = (labels[:, None] + torch.arange(CHANNELS)) % CLASSES / CLASSES * 2 - 1
    latents = levels[:, :, None, None] + 0.1 * torch.randn(size, CHANNELS, IMAGE, IMAGE, generator=generator)
    return latents, labels


def attach(transformer: DiTTransformer2DModel, routes: bool, steps: int, optimizer, batch_size: int):
    """The random-LTD part: surgery on the transformer, and the driver that steps it."""
    tokens = (IMAGE // PATCH) ** 2
    if routes:
        if "routes" not in inspect.signature(random_ltd.apply).parameters:
            raise SystemExit("--routes: this random_ltd.apply has no routes= (span routing) yet")
        random_ltd.apply(transformer, routes=[(0.5, 1, 2)], seed=0)  # the route fixes its own kept length
        return None
    handle = random_ltd.apply(transformer, "1:-1", seed=0)  # blocks 1 and 2 of 4
    schedule = random_ltd.MSLG(tokens, start=tokens // 2, increment=tokens // 8, full_at=0.75, total_steps=steps)
    total = random_ltd.total_layer_tokens(schedule, steps, batch_size=batch_size, num_layers=4, drop_layers=[1, 2])
    lr = random_ltd.LayerTokenLR(optimizer, total, warmup_layer_tokens=total // 10)
    return random_ltd.Driver(handle, schedule, batch_size=batch_size, seq_len=tokens, lr_scheduler=lr)


def train(steps: int, routes: bool, batch_size: int = 8) -> tuple[DiTTransformer2DModel, list[float]]:
    torch.manual_seed(0)
    transformer = build().train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3)
    driver = attach(transformer, routes, steps, optimizer, batch_size)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    losses = []
    for step in range(steps):
        kept = driver.before_step() if driver else None  # sets this step's kept length
        latents, labels = batch(step, batch_size)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = transformer(noisy, timestep=timesteps, class_labels=labels).sample
        loss = F.mse_loss(prediction, noise)  # over every token: dropped ones took the identity path
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if driver:
            driver.after_step()  # counts layer-tokens, steps the LayerToken LR
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f}" + (f", kept {kept} of 64 tokens" if kept else ""))
    return transformer, losses


@torch.no_grad()
def sample(transformer: DiTTransformer2DModel, labels: torch.Tensor, steps: int = 4) -> torch.Tensor:
    """DDIM sampling; in eval mode the wrapped blocks never drop or route."""
    transformer.eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    x = torch.randn(len(labels), CHANNELS, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps:
        predicted = transformer(x, timestep=t.expand(len(labels)), class_labels=labels).sample
        x = scheduler.step(predicted, t, x).prev_sample
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--routes", action="store_true", help="TREAD-style span routing instead of random-LTD")
    args = parser.parse_args()
    transformer, losses = train(args.steps, args.routes)
    samples = sample(transformer, torch.arange(4))
    random_ltd.remove(transformer)  # the original block classes; state_dict keys never changed
    print(f"trained {args.steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
          f"samples {tuple(samples.shape)}, finite: {bool(torch.isfinite(samples).all())}")


if __name__ == "__main__":
    main()
