"""The noise schedule of PixArt: linear beta from 1e-4 to 0.02 over 1000 steps, as in DDPM.

The training losses use the tensors below; the diffusers schedulers used for sampling are configured with
the same schedule, so that a model trained here samples correctly from a saved pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02

_SCHEDULE_CONFIG = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class Schedule:
    """Per-timestep quantities of the diffusion process, float64 for the VB term's logs."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    # log beta_tilde with t = 0 clipped to t = 1 (beta_tilde_0 = 0), as improved DDPM
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def linear_schedule(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> Schedule:
    """The schedule with linearly spaced betas."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return Schedule(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        ),
        posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    )


# LCM's consistency function scales the timestep by 10 before its boundary conditions (official and diffusers)
LCM_TIMESTEP_SCALING = 10.0


def lcm_scheduler(original_inference_steps: int) -> LCMScheduler:
    """diffusers' LCM sampler on this schedule; its original steps are the distillation solver's grid."""
    return LCMScheduler(**_SCHEDULE_CONFIG, original_inference_steps=original_inference_steps, clip_sample=False,
                        timestep_scaling=LCM_TIMESTEP_SCALING)


def ddpm_scheduler() -> DDPMScheduler:
    """diffusers' DDPM scheduler on this schedule (its ``add_noise`` is the forward process)."""
    return DDPMScheduler(**_SCHEDULE_CONFIG, clip_sample=False)


class DataRangeDPMSolver(DPMSolverMultistepScheduler):
    """DPM-Solver++ whose data prediction x0 is clamped, per latent channel, to the range of the
    latents the model was trained on: DDPM's ``clip_denoised`` for latents. Near t = 999 an
    epsilon-model's x0 is its epsilon error times 1 / sqrt(abar) (~160); the tiny models' errors put
    single latents at 30-60 where the data stay within +-6, and the solver carries them to t = 0,
    where the decoder draws them as specks and stripes. Only ever built in memory (``load_pipeline``):
    a saved pipeline keeps diffusers' own scheduler class."""

    latent_low: torch.Tensor
    latent_high: torch.Tensor

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        x0 = super().convert_model_output(model_output, *args, sample=sample, **kwargs)
        shape = (1, -1) + (1,) * (x0.ndim - 2)
        low, high = self.latent_low.to(x0).view(shape), self.latent_high.to(x0).view(shape)
        return torch.maximum(torch.minimum(x0, high), low)


def dpm_solver_scheduler(latent_range: Mapping[str, Sequence[float]] | None = None) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (2nd order, multistep) on this schedule: the paper's 20-step sampler; with
    ``latent_range`` ({"low": [...], "high": [...]}, scaled latents, one value per channel, as a
    stage's ``stage.json`` holds it) the predicted x0 stays inside it (``DataRangeDPMSolver``)."""
    config = {**_SCHEDULE_CONFIG, "algorithm_type": "dpmsolver++", "solver_order": 2}
    if latent_range is None:
        return DPMSolverMultistepScheduler(**config)
    low, high = torch.tensor(latent_range["low"]), torch.tensor(latent_range["high"])
    if low.shape != high.shape or low.ndim != 1 or bool((low > high).any()):
        raise ValueError(f"latent_range: low {low.tolist()} and high {high.tolist()} must be per-channel "
                         "lists of one length with low <= high")
    scheduler = DataRangeDPMSolver(**config)
    scheduler.latent_low, scheduler.latent_high = low, high
    return scheduler


def use_dpm_solver(pipeline: Any) -> None:
    """Give ``pipeline`` this schedule's DPM-Solver++ unless it has one already (``load_pipeline``
    installs a stage's, with its latent range)."""
    if not isinstance(pipeline.scheduler, DPMSolverMultistepScheduler):
        pipeline.scheduler = dpm_solver_scheduler()
