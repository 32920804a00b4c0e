"""DMD: distil the stage's weak input (the teacher) into a one-step generator (Yin et al. 2024), as
PixArt-Sigma did at 512 px.

Three copies of the teacher: the generator G (trained), whose one step at T = t_gen gives
x0 = (z - sqrt(1 - abar_T) eps_G(z, T)) / sqrt(abar_T); the real score (frozen, CFG ``real_cfg``); the
fake score (trained online with the eps loss on detached generator samples, one update per generator
update). The generator's loss is the distribution-matching term plus ``regression_weight`` x a latent MSE
to the teacher's noise -> image pairs (LPIPS weights are not available offline). G and the fake score
are two DeepSpeed engines; the loop is the stage trainer's, randomness keyed by (seed, step) the same way,
and the exported EMA generator is a diffusers pipeline like every stage's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pixart.config import DMDConfig
from pixart.diffusion.losses import q_sample
from pixart.diffusion.one_step import predicted_x0
from pixart.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from pixart.models.builders import with_null_caption
from pixart.train.dmd_pairs import TeacherPairs, latent_shape
from pixart.train.ema import EMA
from pixart.train.job import StageJob
from pixart.train.loop import keyed_generator, rank_slice
from pixart.train.trainer import StageTrainer, predicted_eps
from pixart.train.weak_input import load_transformer

# The distribution-matching timestep range of DMD: t in [0.02, 0.98] x 1000.
DM_T_MIN, DM_T_MAX = 20, 980
FAKE_SCORE_DIR = "fake-score"


def generate(generator, z: torch.Tensor, t_gen: int, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The one-step generator: x0 from noise z, read as x_T at T = t_gen."""
    t = torch.full((z.shape[0],), t_gen, device=z.device, dtype=torch.long)
    return predicted_x0(z, predicted_eps(generator, z, t, text, mask), t)


@torch.no_grad()
def real_score_x0(teacher, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                  null_text: torch.Tensor, null_mask: torch.Tensor, cfg: float) -> torch.Tensor:
    """The frozen teacher's x0 prediction with classifier-free guidance against the null caption."""
    text, mask, null, null_m = with_null_caption(text, mask, null_text, null_mask)
    e = predicted_eps(teacher, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, null]), torch.cat([mask, null_m]))
    cond, uncond = e.chunk(2)
    return predicted_x0(x_t, uncond + cfg * (cond - uncond), t)


def distribution_matching_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * mse(x0, stopgrad(x0 - grad)): its gradient in x0 is ``grad`` / numel, with
    grad = (x0_fake - x0_real) / mean|x0 - x0_real| per sample, DMD's normalisation."""
    weight = (x0.detach() - x0_real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
    grad = torch.nan_to_num((x0_fake - x0_real) / weight)
    return 0.5 * F.mse_loss(x0, (x0 - grad).detach())


def dmd_draws(seed: int, step: int, micro_step: int, global_n: int, shape: torch.Size, n_pairs: int,
              rank: int, world: int) -> dict[str, torch.Tensor]:
    """The randomness of one global DMD micro-batch: generator noise, the distribution-matching t and
    noise, the fake score's t and noise, and which teacher pairs enter the regression loss."""
    g = keyed_generator(seed, step, micro_step)
    latent = (global_n, *shape)
    draws = {
        "z": torch.randn(latent, generator=g),
        "dm_t": torch.randint(DM_T_MIN, DM_T_MAX + 1, (global_n,), generator=g),
        "dm_noise": torch.randn(latent, generator=g),
        "fake_t": torch.randint(0, NUM_TRAIN_TIMESTEPS, (global_n,), generator=g),
        "fake_noise": torch.randn(latent, generator=g),
        "pairs": torch.randint(0, n_pairs, (global_n,), generator=g),
    }
    return rank_slice(draws, rank, world)


def dmd_step(generator, fake_score, teacher, cfg: DMDConfig, draws: dict[str, torch.Tensor],
             captions: dict[str, torch.Tensor], null: tuple[torch.Tensor, torch.Tensor],
             pairs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One DMD micro-step: backward + step of the generator engine on distribution matching + regression,
    then of the fake-score engine on the eps loss of the same (detached) samples. ``captions`` and
    ``pairs`` hold text / mask (pairs also noise / latent), on the engines' device; returns the losses."""
    text, mask = captions["text"], captions["mask"]
    x0 = generate(generator, draws["z"], cfg.t_gen, text, mask)
    with torch.no_grad():
        x_t = q_sample(x0.detach(), draws["dm_noise"], draws["dm_t"])
        x0_real = real_score_x0(teacher, x_t, draws["dm_t"], text, mask, *null, cfg.real_cfg)
        x0_fake = predicted_x0(x_t, predicted_eps(fake_score, x_t, draws["dm_t"], text, mask), draws["dm_t"])
    dm = distribution_matching_loss(x0, x0_real, x0_fake)
    regression = F.mse_loss(generate(generator, pairs["noise"], cfg.t_gen, pairs["text"], pairs["mask"]),
                            pairs["latent"])
    loss = dm + cfg.regression_weight * regression
    generator.backward(loss)
    generator.step()

    fake_t, fake_noise = draws["fake_t"], draws["fake_noise"]
    fake = F.mse_loss(predicted_eps(fake_score, q_sample(x0.detach(), fake_noise, fake_t), fake_t, text, mask), fake_noise)
    fake_score.backward(fake)
    fake_score.step()
    return {"loss": loss.detach(), "distribution_matching": dm.detach(), "regression": regression.detach(),
            "fake_score": fake.detach()}


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class DMDTrainer(StageTrainer):
    """The stage trainer with DMD's three models and its micro-step; the rest is the stage's."""

    def __init__(self, job: StageJob, pairs_file: Path) -> None:
        if job.weak_input is None:
            raise ValueError(f"stages.{job.name}.init_from: DMD needs a teacher (the weak input)")
        super().__init__(job)
        self.cfg: DMDConfig = job.stage.dmd
        self.pairs_file = pairs_file

    def build(self) -> None:
        job = self.job
        # the frozen real score runs in the engines' precision: inference only, and half the memory at xl
        dtype = torch.bfloat16 if self.train.precision == "bf16" else torch.float32
        self.teacher = load_transformer(job, job.components).to(self.device, dtype).eval().requires_grad_(False)
        generator = self.trainable()
        self.ema = EMA(generator, self.train.ema_decay)
        self.engine = self.engine_of(generator, job.stage.lr)
        self.companions = {FAKE_SCORE_DIR: self.engine_of(load_transformer(job, job.components),
                                                          self.cfg.fake_lr or job.stage.lr)}
        self.load_captions()
        self.shape = latent_shape(self.cache)
        self.pairs = TeacherPairs(self.pairs_file)
        if self.pairs.batch(torch.tensor([0]))["latent"].shape[1:] != self.shape:
            raise ValueError(f"{self.pairs_file}: pair latents do not match the {tuple(self.shape)} latents of "
                             f"{job.features}; remake the teacher pairs")
        self.null_caption = tuple(t.to(self.device) for t in self.null_caption)

    def micro_step(self, step: int, micro_step: int) -> dict[str, torch.Tensor]:
        cache, device = self.cache, self.device
        indices = next(self.batches)
        captions = cache.collate([cache[i] for i in indices[self.rank::self.world]])
        draws = _to(dmd_draws(self.train.seed, step, micro_step, len(indices), self.shape, len(self.pairs),
                              self.rank, self.world), device)
        pair = self.pairs.batch(draws.pop("pairs").cpu())
        pair_captions = cache.collate([cache[int(i)] for i in pair.pop("index")])
        return dmd_step(
            self.engine, self.companions[FAKE_SCORE_DIR], self.teacher, self.cfg, draws,
            _to({"text": captions["text"], "mask": captions["mask"]}, device), self.null_caption,
            _to({**pair, "text": pair_captions["text"], "mask": pair_captions["mask"]}, device),
        )

    def run_params(self) -> dict[str, Any]:
        return {**super().run_params(), "teacher_pairs": str(self.pairs_file)}

    def run_tags(self) -> dict[str, str]:
        return {"data_version": self.job.data_version, "weak_input": self.job.stage.init_from, "one_step": "true"}


def train_dmd(job: StageJob, pairs_file: Path) -> Path:
    """Run the DMD stage ``job`` (its weak input is the teacher) and export the one-step generator."""
    return DMDTrainer(job, pairs_file).run()
