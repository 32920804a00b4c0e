"""The trainer of one curriculum stage: the loop's variant (``pixart.train.loop``) that trains a
diffusion transformer on a stage's feature cache.

A stage starts from its weak input's exported weights (``init_from``) with a fresh optimizer, or
resumes its own interrupted run from the last resumable checkpoint; it exports the EMA weights as a
diffusers pipeline folder plus ``stage.json``. One process on a laptop (gloo), many GPUs and nodes
under the ``deepspeed`` launcher or torchrun (NCCL): the same loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixart import tracking
from pixart.data.buckets import AspectRatioBatchSampler
from pixart.data.features import FeatureCache
from pixart.data.null_caption import load_null_caption
from pixart.diffusion.caption_dropout import drop_captions, dropout_draws, mix_captions
from pixart.diffusion.losses import q_sample, training_losses
from pixart.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from pixart.train.checkpoint import ResumableState
from pixart.train.ema import EMA
from pixart.train.export import export_stage
from pixart.train.job import StageJob
from pixart.train.loop import Trainer, keyed_generator, rank_slice
from pixart.train.optim import build_optimizer, constant_with_warmup
from pixart.train.weak_input import load_transformer


def _draws(seed: int, step: int, micro_step: int, global_n: int, latent_shape: torch.Size, p_drop: float,
           rank: int, world: int, p_raw: float = 0.0) -> dict[str, torch.Tensor]:
    """The randomness of one global micro-batch: posterior sample, noise, timesteps, caption dropout,
    and which samples train on their raw caption (the caption mix; drawn last, so that a stage
    without one draws as before)."""
    g = keyed_generator(seed, step, micro_step)
    shape = (global_n, *latent_shape)
    draws = {
        "latent": torch.randn(shape, generator=g),
        "noise": torch.randn(shape, generator=g),
        "t": torch.randint(0, NUM_TRAIN_TIMESTEPS, (global_n,), generator=g),
        "drop": dropout_draws(global_n, p_drop, g),
        "raw": dropout_draws(global_n, p_raw, g),
    }
    return rank_slice(draws, rank, world)


class StageTrainer(Trainer):
    """A curriculum stage: the eps + learned-sigma loss on noised latents of the stage's features."""

    def __init__(self, job: StageJob) -> None:
        super().__init__(job.name, job.profile.train, job.stage.steps, job.stage.batch_size, job.state_dir)
        self.job = job

    def engine_of(self, model: torch.nn.Module, lr: float):
        """A DeepSpeed engine training ``model`` with the profile's optimizer at ``lr``, warmed up."""
        optimizer = build_optimizer(model.parameters(), self.train, lr)
        return self.initialize(model, optimizer, constant_with_warmup(optimizer, self.job.stage.warmup_steps))

    def trainable(self) -> torch.nn.Module:
        """The weak input's transformer, checkpointing its activations when the profile says so."""
        model = load_transformer(self.job, self.job.components)
        if self.train.grad_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    def build(self) -> None:
        transformer = self.trainable()
        self.ema = EMA(transformer, self.train.ema_decay)
        self.engine = self.engine_of(transformer, self.job.stage.lr)
        self.load_captions()
        self.scaling = self.job.components.scaling_factor()

    def load_captions(self) -> None:
        """The feature cache, the aspect-bucketed sampler of its global micro-batches, the null caption."""
        self.cache = FeatureCache(self.job.features)
        micro = self.engine.train_micro_batch_size_per_gpu()
        self.sampler = AspectRatioBatchSampler(self.cache.ratios, micro * self.world, seed=self.train.seed,
                                               drop_last=True)
        self.batches = _endless(self.sampler)
        self.null_caption = load_null_caption(self.job.features)
        if self.job.stage.real_prompt_ratio > 0 and not self.cache.has_raw:
            raise RuntimeError(f"{self.job.features}: no raw captions for real_prompt_ratio "
                               f"{self.job.stage.real_prompt_ratio}; rebuild the feature set (dvc repro)")

    def micro_step(self, step: int, micro_step: int) -> dict[str, torch.Tensor]:
        device, engine = self.device, self.engine
        indices = next(self.batches)
        batch = self.cache.collate([self.cache[i] for i in indices[self.rank::self.world]])
        draws = _draws(self.train.seed, step, micro_step, len(indices), batch["latent_mean"].shape[1:],
                       self.train.caption_dropout, self.rank, self.world, self.job.stage.real_prompt_ratio)
        x0 = (batch["latent_mean"] + batch["latent_std"] * draws["latent"]) * self.scaling
        noise, t = draws["noise"], draws["t"]
        text, mask = batch["text"], batch["mask"]
        if self.job.stage.real_prompt_ratio > 0:
            text, mask = mix_captions(text, mask, batch["raw_text"], batch["raw_mask"], draws["raw"])
        text, mask = drop_captions(text, mask, *_pad_to(*self.null_caption, mask), draws["drop"])
        out = denoiser_output(engine, q_sample(x0, noise, t).to(device), t.to(device), text.to(device),
                              mask.to(device))
        losses = {k: v.mean() for k, v in training_losses(
            out, x0.to(device), noise.to(device), t.to(device), min_snr_gamma=self.train.min_snr_gamma
        ).items()}
        engine.backward(losses["loss"])
        engine.step()
        return losses

    def run_params(self) -> dict[str, Any]:
        job = self.job
        return {"stage": job.stage.model_dump(mode="json"), "profile": job.profile_name, "model": job.profile.model}

    def run_tags(self) -> dict[str, str]:
        return {"data_version": self.job.data_version, "weak_input": self.job.stage.init_from or ""}

    def client_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def restore(self, client: dict[str, Any]) -> None:
        self.sampler.load_state_dict(client["sampler"])

    def export(self, run: tracking.StageRun) -> Path:
        """Export the EMA weights in fp32: the module is upcast before the fp32 shadow is copied in, so a
        bf16 run exports what its EMA accumulated, not a bf16 rounding of it."""
        model = self.engine.module.float()
        self.ema.copy_to(model)
        return export_stage(self.job, model, run)


def train(job: StageJob) -> Path:
    """Train the stage ``job`` from its weak input (or resume it) and export its checkpoint."""
    return StageTrainer(job).run()


def _endless(sampler: AspectRatioBatchSampler):
    """Endless global micro-batches of dataset indices; each rank trains on its slice of each."""
    while True:
        yield from sampler


def denoiser_output(model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """The transformer's output (epsilon, then the learned-sigma channels) in fp32, whatever the
    precision it runs in (model: a module or a DeepSpeed engine). A bf16 engine casts its weights,
    not its inputs, so the latents and caption features are cast to the weights' dtype here, and the
    losses are computed in fp32 from the upcast output."""
    dtype = next(model.parameters()).dtype
    return model(x_t.to(dtype), encoder_hidden_states=text.to(dtype), encoder_attention_mask=mask, timestep=t,
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample.float()


def predicted_eps(model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The epsilon half of a learned-sigma transformer's output (model: a module or a DeepSpeed engine),
    what the distillations (DMD, LCM) read."""
    return denoiser_output(model, x_t, t, text, mask)[:, : x_t.shape[1]]


def import_official(job: StageJob) -> Path:
    """An ``import`` stage (xl's base, PixArt-alpha): the official checkpoint, converted and exported
    as the curriculum's first weak input, with no training step."""
    transformer = load_transformer(job, job.components)
    run_params = {"stage": job.stage.model_dump(mode="json"), "profile": job.profile_name,
                  "model": job.profile.model}
    with tracking.stage_run(job.name, run_params, run_file=ResumableState(job.state_dir).run_file) as run:
        run.set_tags({"data_version": job.data_version, "pretrained": str(job.stage.pretrained)})
        return export_stage(job, transformer, run)


def _pad_to(text: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored null caption (its real tokens only), zero-padded to the batch's caption length."""
    pad = like.shape[1] - mask.shape[1]
    return torch.nn.functional.pad(text, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))
