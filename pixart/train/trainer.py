"""The DeepSpeed trainer of one curriculum stage, top to bottom.

One process on a laptop (gloo), many GPUs and nodes under the ``deepspeed`` launcher or torchrun
(NCCL): the same loop. A stage starts from its weak input's exported weights (``init_from``) with a
fresh optimizer, or resumes its own interrupted run from the last resumable checkpoint; it exports
the EMA weights as a diffusers pipeline folder plus ``stage.json``.

The last step is checkpointed like every ``save_every``-th before the export: a stage that fails to
export or register (disk full, MLflow down) loses no step, and its re-run resumes at the last step,
trains nothing, and exports and registers.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pixart import tracking
from pixart.config import Profile, StageConfig
from pixart.data.buckets import AspectRatioBatchSampler
from pixart.data.features import FeatureCache
from pixart.data.null_caption import load_null_caption
from pixart.diffusion.caption_dropout import drop_captions, dropout_draws
from pixart.diffusion.losses import q_sample, training_losses
from pixart.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from pixart.train import distributed
from pixart.train.checkpoint import ResumableState
from pixart.train.components import Components
from pixart.train.ds_config import deepspeed_config
from pixart.train.ema import EMA
from pixart.train.export import export_stage
from pixart.train.optim import build_optimizer, constant_with_warmup
from pixart.train.weak_input import load_transformer

# Crash drill (tests, retry rehearsals): the process SIGKILLs itself right after this step. Read when a
# stage starts, not on import: a `pixart worker` imports this module once for every stage it forks.
SIGKILL_AFTER_STEP_ENV = "PIXART_SIGKILL_AFTER_STEP"


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


def _batches(sampler: AspectRatioBatchSampler):
    """Endless global micro-batches of dataset indices; each rank trains on its slice of each."""
    while True:
        yield from sampler


def _draws(seed: int, step: int, micro_step: int, global_n: int, latent_shape: torch.Size, p_drop: float,
           rank: int, world: int) -> dict[str, torch.Tensor]:
    """The randomness of one global micro-batch (posterior sample, noise, timesteps, caption dropout),
    drawn whole from a generator keyed by (seed, step, micro-step) and sliced by rank: the same
    numbers on one process or many, and after a resume, with no RNG state to checkpoint."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro_step)
    shape = (global_n, *latent_shape)
    draws = {
        "latent": torch.randn(shape, generator=g),
        "noise": torch.randn(shape, generator=g),
        "t": torch.randint(0, NUM_TRAIN_TIMESTEPS, (global_n,), generator=g),
        "drop": dropout_draws(global_n, p_drop, g),
    }
    return {k: v[rank::world] for k, v in draws.items()}


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
    null_text, null_mask = load_null_caption(job.features)
    scaling = job.components.scaling_factor()

    state = ResumableState(job.state_dir)
    start = state.resume(engine, ema, sampler)
    crash_at = int(os.environ.get(SIGKILL_AFTER_STEP_ENV, "0"))

    batches = _batches(sampler)
    run_params = {"stage": stage.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
                  "profile": job.profile_name, "model": job.profile.model, "world_size": world,
                  "resumed_from_step": start}
    with tracking.stage_run(job.name, run_params, enabled=distributed.is_main(), run_file=state.run_file) as run:
        run.set_tags({"data_version": job.data_version, "weak_input": stage.init_from or ""})
        seen, tick = 0, time.perf_counter()
        for step in range(start + 1, stage.steps + 1):
            for micro_step in range(engine.gradient_accumulation_steps()):
                indices = next(batches)
                batch = cache.collate([cache[i] for i in indices[rank::world]])
                draws = _draws(train_cfg.seed, step, micro_step, len(indices), batch["latent_mean"].shape[1:],
                               train_cfg.caption_dropout, rank, world)
                x0 = (batch["latent_mean"] + batch["latent_std"] * draws["latent"]) * scaling
                noise, t = draws["noise"], draws["t"]
                text, mask = drop_captions(batch["text"], batch["mask"], *_pad_to(null_text, null_mask, batch["mask"]),
                                           draws["drop"])
                out = denoiser_output(engine, q_sample(x0, noise, t).to(device), t.to(device), text.to(device),
                                      mask.to(device))
                losses = {k: v.mean() for k, v in training_losses(
                    out, x0.to(device), noise.to(device), t.to(device), min_snr_gamma=train_cfg.min_snr_gamma
                ).items()}
                engine.backward(losses["loss"])
                engine.step()
                seen += x0.shape[0] * world
            ema.update(engine.module)

            if step % train_cfg.log_every == 0 or step == stage.steps:
                elapsed = time.perf_counter() - tick
                losses = global_mean(losses, world)
                metrics = {
                    "loss": losses["loss"], "mse": losses["mse"], "vb": losses["vb"],
                    "lr": schedule.get_last_lr()[0], "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                    "images_per_s": seen / elapsed,
                }
                run.log_metrics(metrics, step=step)
                report_progress(job.name, step, stage.steps, train_cfg.log_every, metrics)
                seen, tick = 0, time.perf_counter()
            if step % train_cfg.save_every == 0 or step == stage.steps:
                state.save(engine, step, ema, {"sampler": sampler.state_dict(), "ema_updates": ema.updates})
            if step == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)

        return export_ema(job, engine, ema, run)


def denoiser_output(model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """The transformer's output (epsilon, then the learned-sigma channels) in fp32, whatever the
    precision it runs in (model: a module or a DeepSpeed engine). A bf16 engine casts its weights,
    not its inputs, so the latents and caption features are cast to the weights' dtype here, and the
    losses are computed in fp32 from the upcast output."""
    dtype = next(model.parameters()).dtype
    return model(x_t.to(dtype), encoder_hidden_states=text.to(dtype), encoder_attention_mask=mask, timestep=t,
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample.float()


def export_ema(job: StageJob, engine, ema: EMA, run: tracking.StageRun) -> Path:
    """Export the EMA weights in fp32: the module is upcast before the fp32 shadow is copied in, so a
    bf16 run exports what its EMA accumulated, not a bf16 rounding of it."""
    model = engine.module.float()
    ema.copy_to(model)
    return export_stage(job, model, run)


def report_progress(name: str, step: int, steps: int, log_every: int, metrics: dict[str, float]) -> None:
    """About twenty console lines per stage (rank 0): what `dvc repro` shows while a stage trains."""
    every = log_every * max(1, steps // (20 * log_every))
    if distributed.is_main() and (step % every == 0 or step == steps):
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "lr")
        print(f"{name} step {step}/{steps}  {shown}", flush=True)


def import_official(job: StageJob) -> Path:
    """An ``import`` stage (xl's base, PixArt-alpha): the official checkpoint, converted and exported
    as the curriculum's first weak input, with no training step."""
    transformer = load_transformer(job, job.components)
    run_params = {"stage": job.stage.model_dump(mode="json"), "profile": job.profile_name,
                  "model": job.profile.model}
    with tracking.stage_run(job.name, run_params, run_file=ResumableState(job.state_dir).run_file) as run:
        run.set_tags({"data_version": job.data_version, "pretrained": str(job.stage.pretrained)})
        return export_stage(job, transformer, run)


def global_mean(losses: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """The last micro-batch's losses averaged over ranks: the global batch's, whatever the world size."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return dict(zip(losses, values.tolist(), strict=True))


def _pad_to(text: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored null caption (its real tokens only), zero-padded to the batch's caption length."""
    pad = like.shape[1] - mask.shape[1]
    return torch.nn.functional.pad(text, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))
