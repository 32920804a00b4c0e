"""LCM: distil the stage's weak input (the teacher) into a few-step generator by latent consistency
distillation, as PixArt-LCM did (``pixart.diffusion.lcm`` holds the solver and the consistency function).

Three copies of the teacher: the student (trained), the frozen teacher, and the target network, an EMA
of the student (decay ``target_decay``, no warm-up, as the official ``ema_update``). Per sample: a grid
point t_n of the skipping-step DDIM solver, x_{t_n} noised from the stage's latents; the teacher's
guided x0 and eps take one solver step to t_n - k; the loss is the pseudo-Huber distance between
the student's f(x_{t_n}, t_n) and the target's f(x_{t_n - k}, t_n - k). The loop, the keyed randomness
and the export are the stage trainer's; the exported weights are the target network's (the loop's
EMA), in a pipeline folder that ships an ``LCMScheduler``.
"""

from __future__ import annotations

import torch

from pixart.config import LCMConfig
from pixart.diffusion.lcm import SkippingStepDDIM, consistency, consistency_loss, guided
from pixart.diffusion.losses import q_sample
from pixart.diffusion.one_step import predicted_x0
from pixart.models.builders import with_null_caption
from pixart.train.ema import EMA
from pixart.train.job import StageJob
from pixart.train.loop import keyed_generator, rank_slice
from pixart.train.trainer import StageTrainer, predicted_eps
from pixart.train.weak_input import load_transformer


def lcm_draws(seed: int, step: int, micro_step: int, global_n: int, shape: torch.Size, grid_points: int,
              rank: int, world: int) -> dict[str, torch.Tensor]:
    """The randomness of one global LCM micro-batch: posterior sample, noise, solver grid index."""
    g = keyed_generator(seed, step, micro_step)
    latent = (global_n, *shape)
    draws = {
        "latent": torch.randn(latent, generator=g),
        "noise": torch.randn(latent, generator=g),
        "index": torch.randint(0, grid_points, (global_n,), generator=g),
    }
    return rank_slice(draws, rank, world)


@torch.no_grad()
def consistency_target(teacher, target, solver: SkippingStepDDIM, w: float, x_t: torch.Tensor, index: torch.Tensor,
                       text: torch.Tensor, mask: torch.Tensor, null: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The target network's f at the teacher's one guided solver step from x_{t_n} to t_n - k."""
    t, t_prev = (v.to(x_t.device) for v in solver.start_and_target(index.cpu()))
    text_c, mask_c, null_text, null_mask = with_null_caption(text, mask, *null)
    e = predicted_eps(teacher, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text_c, null_text]),
                      torch.cat([mask_c, null_mask]))
    cond, uncond = e.chunk(2)
    x0 = guided(predicted_x0(x_t, cond, t), predicted_x0(x_t, uncond, t), w)
    x_prev = solver.step(x0, guided(cond, uncond, w), index)
    return consistency(x_prev, predicted_eps(target, x_prev, t_prev, text, mask), t_prev)


def lcm_step(student, teacher, target, solver: SkippingStepDDIM, cfg: LCMConfig, x0: torch.Tensor,
             draws: dict[str, torch.Tensor], text: torch.Tensor, mask: torch.Tensor,
             null: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One LCM micro-step: backward + step of the student engine on the consistency loss; returns it."""
    index = draws["index"]
    t = solver.start_and_target(index.cpu())[0].to(x0.device)
    x_t = q_sample(x0, draws["noise"], t)
    prediction = consistency(x_t, predicted_eps(student, x_t, t, text, mask), t)
    goal = consistency_target(teacher, target, solver, cfg.w, x_t, index, text, mask, null)
    loss = consistency_loss(prediction, goal, cfg.loss, cfg.huber_c)
    student.backward(loss)
    student.step()
    return {"loss": loss.detach()}


class LCMTrainer(StageTrainer):
    """The stage trainer with LCM's teacher and target network and its micro-step."""

    def __init__(self, job: StageJob) -> None:
        if job.weak_input is None:
            raise ValueError(f"stages.{job.name}.init_from: LCM needs a teacher (the weak input)")
        super().__init__(job)
        self.cfg: LCMConfig = job.stage.lcm
        self.solver = SkippingStepDDIM(self.cfg.num_ddim_timesteps)

    def build(self) -> None:
        job = self.job
        # teacher and target run inference only, in the engines' precision
        dtype = torch.bfloat16 if self.train.precision == "bf16" else torch.float32
        self.teacher, self.target = (load_transformer(job, job.components).to(self.device, dtype).eval()
                                     .requires_grad_(False) for _ in range(2))
        student = self.trainable()
        self.ema = EMA(student, self.cfg.target_decay, warmup=False)
        self.engine = self.engine_of(student, job.stage.lr)
        self.load_captions()
        self.scaling = job.components.scaling_factor()
        self.null_caption = tuple(t.to(self.device) for t in self.null_caption)

    def micro_step(self, step: int, micro_step: int) -> dict[str, torch.Tensor]:
        device = self.device
        indices = next(self.batches)
        batch = self.cache.collate([self.cache[i] for i in indices[self.rank::self.world]])
        draws = lcm_draws(self.train.seed, step, micro_step, len(indices), batch["latent_mean"].shape[1:],
                          len(self.solver), self.rank, self.world)
        x0 = (batch["latent_mean"] + batch["latent_std"] * draws.pop("latent")) * self.scaling
        # the target network is the EMA the loop keeps (and saves, and resumes)
        self.ema.copy_to(self.target)
        return lcm_step(self.engine, self.teacher, self.target, self.solver, self.cfg, x0.to(device),
                        {k: v.to(device) for k, v in draws.items()}, batch["text"].to(device),
                        batch["mask"].to(device), self.null_caption)

    def run_tags(self) -> dict[str, str]:
        return {"data_version": self.job.data_version, "weak_input": self.job.stage.init_from, "few_step": "true"}


def train_lcm(job: StageJob):
    """Run the LCM stage ``job`` (its weak input is the teacher) and export the few-step generator."""
    return LCMTrainer(job).run()
