"""The DeepSpeed trainer of one curriculum stage, top to bottom.

One process on a laptop (gloo), many GPUs and nodes under the ``deepspeed`` launcher or torchrun
(NCCL): the same loop. A stage starts from its weak input's exported weights (``init_from``) with a
fresh optimizer, or resumes its own interrupted run from the last resumable checkpoint; it exports
the EMA weights as a diffusers pipeline folder plus ``stage.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pixart import tracking
from pixart.config import Profile, StageConfig
from pixart.data.buckets import AspectRatioBatchSampler
from pixart.data.features import FeatureCache
from pixart.data.null_caption import load_null_caption
from pixart.diffusion.caption_dropout import drop_captions
from pixart.diffusion.losses import q_sample, training_losses
from pixart.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from pixart.train import distributed
from pixart.train.checkpoint import ResumableState, rng_state, set_rng_state
from pixart.train.ds_config import deepspeed_config
from pixart.train.ema import EMA
from pixart.train.optim import build_optimizer, constant_with_warmup
from pixart.train.export import export_stage
from pixart.train.components import Components
from pixart.train.weak_input import load_transformer


@dataclass
class StageJob:
    """Everything one training stage reads and writes, resolved by ``stages.train``."""

    name: str
    profile_name: str
    profile: Profile
    stage: StageConfig
    features: Path
    components: Components
    out_dir: Path
    state_dir: Path
    data_version: str
    weak_input: Path | None = None
    sample_prompts: list[str] = field(default_factory=list)
    stop_after: int | None = None  # tests: end the process early, as a crash would


def _batches(sampler: AspectRatioBatchSampler, rank: int, world: int):
    """Endless global batches; each rank takes its own slice, so all ranks see one global batch."""
    while True:
        for batch in sampler:
            yield batch[rank::world]


def train(job: StageJob) -> Path:
    rank, world = distributed.init()
    train_cfg, stage = job.profile.train, job.stage
    device = distributed.device()
    torch.manual_seed(train_cfg.seed)

    transformer = load_transformer(job, job.components)
    if train_cfg.grad_checkpointing:
        transformer.enable_gradient_checkpointing()
    ema = EMA(transformer, train_cfg.ema_decay)
    optimizer = build_optimizer(transformer.parameters(), train_cfg, stage.lr)
    schedule = constant_with_warmup(optimizer, stage.warmup_steps)
    import deepspeed

    engine, optimizer, _, schedule = deepspeed.initialize(
        model=transformer, optimizer=optimizer, lr_scheduler=schedule,
        config=deepspeed_config(train_cfg, stage.batch_size, world),
    )

    cache = FeatureCache(job.features)
    micro = engine.train_micro_batch_size_per_gpu()
    sampler = AspectRatioBatchSampler(cache.ratios, micro * world, seed=train_cfg.seed, drop_last=True)
    noise_gen = torch.Generator().manual_seed(train_cfg.seed * 1000 + rank)
    null_text, null_mask = load_null_caption(job.features)
    scaling = job.components.scaling_factor()

    state = ResumableState(job.state_dir)
    start = 0
    client = state.load(engine, ema)
    if client is not None:
        start = client["step"]
        sampler.load_state_dict(client["sampler"])
        set_rng_state(noise_gen, client["rng"][rank])

    batches = _batches(sampler, rank, world)
    run_params = {"stage": stage.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
                  "profile": job.profile_name, "model": job.profile.model, "world_size": world,
                  "resumed_from_step": start}
    with tracking.stage_run(job.name, run_params, enabled=distributed.is_main()) as run:
        run.set_tags({"data_version": job.data_version, "weak_input": stage.init_from or ""})
        seen, tick = 0, time.perf_counter()
        for step in range(start + 1, stage.steps + 1):
            for _ in range(engine.gradient_accumulation_steps()):
                batch = cache.collate([cache[i] for i in next(batches)])
                x0 = (batch["latent_mean"] + batch["latent_std"] * torch.randn(
                    batch["latent_mean"].shape, generator=noise_gen)) * scaling
                noise = torch.randn(x0.shape, generator=noise_gen)
                t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (x0.shape[0],), generator=noise_gen)
                text, mask = drop_captions(batch["text"], batch["mask"], *_pad_to(null_text, null_mask, batch["mask"]),
                                           train_cfg.caption_dropout, noise_gen)
                out = engine(
                    q_sample(x0, noise, t).to(device), encoder_hidden_states=text.to(device),
                    encoder_attention_mask=mask.to(device), timestep=t.to(device),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                ).sample
                losses = {k: v.mean() for k, v in training_losses(
                    out, x0.to(device), noise.to(device), t.to(device), min_snr_gamma=train_cfg.min_snr_gamma
                ).items()}
                engine.backward(losses["loss"])
                engine.step()
                seen += x0.shape[0] * world
            ema.update(engine.module)

            if step % train_cfg.log_every == 0 or step == stage.steps:
                elapsed = time.perf_counter() - tick
                run.log_metrics({
                    "loss": losses["loss"].item(), "mse": losses["mse"].item(), "vb": losses["vb"].item(),
                    "lr": schedule.get_last_lr()[0], "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                    "images_per_s": seen / elapsed,
                }, step=step)
                seen, tick = 0, time.perf_counter()
            if step % train_cfg.save_every == 0 and step < stage.steps:
                state.save(engine, step, ema, {
                    "sampler": sampler.state_dict(), "ema_updates": ema.updates,
                    "rng": _gather_rng(noise_gen),
                })
            if job.stop_after is not None and step >= job.stop_after:
                return job.out_dir

        ema.copy_to(engine.module)
        return export_stage(job, engine.module, run)


def _pad_to(text: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored null caption (its real tokens only), zero-padded to the batch's caption length."""
    pad = like.shape[1] - mask.shape[1]
    return torch.nn.functional.pad(text, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))


def _gather_rng(generator: torch.Generator) -> list[dict[str, Any]]:
    """Every rank's RNG state, so each rank resumes its own noise stream."""
    mine = rng_state(generator)
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [mine]
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, mine)
    return states



