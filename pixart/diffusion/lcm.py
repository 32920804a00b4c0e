"""Latent consistency models (Luo et al. 2023) as PixArt-LCM distilled and samples them.

The facts come from the official ``train_scripts/train_pixart_lcm.py`` and its
``PixArt_xl2_img1024_lcm.py`` config:

- the skipping-step DDIM solver runs on the grid t_n = (n + 1) * k - 1 (k = 1000 / 50 = 20), and one
  solver step goes from t_n to t_n - k (clamped at 0) with x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps,
  where abar_prev is abar at the grid's previous point (abar_0 for the first);
- the teacher's guidance is the LCM form x0_c + w (x0_c - x0_u), the same for eps, with w fixed
  (4.5; the config's w_min / w_max are unused) and no guidance embedding;
- the consistency function is f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, t), with sigma_data 0.5 and the
  timestep scaled by 10; the student keeps predicting epsilon (its learned-sigma channels are dropped).

Sampling uses diffusers' ``LCMScheduler`` on the same linear schedule, without guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import LCMScheduler

from pixart.diffusion.one_step import predicted_x0
from pixart.diffusion.schedule import LCM_TIMESTEP_SCALING, NUM_TRAIN_TIMESTEPS, Schedule, linear_schedule

SIGMA_DATA = 0.5


class SkippingStepDDIM:
    """The skipping-step DDIM solver over ``num_ddim_timesteps`` points of the training schedule."""

    def __init__(self, num_ddim_timesteps: int, schedule: Schedule | None = None) -> None:
        abar = (schedule or linear_schedule()).alphas_cumprod
        self.skip = NUM_TRAIN_TIMESTEPS // num_ddim_timesteps
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1) * self.skip - 1
        self.abar = abar.float()
        self.abar_prev = torch.cat([abar[:1], abar[self.timesteps[:-1]]]).float()

    def __len__(self) -> int:
        return len(self.timesteps)

    def start_and_target(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's timestep t_n and the target's t_n - k (0 at the grid's first point)."""
        start = self.timesteps[index]
        return start, (start - self.skip).clamp(min=0)

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        abar_prev = self.abar_prev.to(x0.device)[index].view(-1, *([1] * (x0.ndim - 1)))
        return abar_prev.sqrt() * x0 + (1.0 - abar_prev).sqrt() * eps


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at integer timesteps ``t``: c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x."""
    scaled = LCM_TIMESTEP_SCALING * t.float()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def consistency(x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) = c_skip x_t + c_out x0 for an epsilon prediction ``eps``."""
    c_skip, c_out = (c.to(x_t.device).view(-1, *([1] * (x_t.ndim - 1))) for c in boundary_scalings(t))
    return c_skip * x_t + c_out * predicted_x0(x_t, eps, t)


def guided(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """The LCM form of classifier-free guidance: cond + w (cond - uncond)."""
    return cond + w * (cond - uncond)


def consistency_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    """Pseudo-Huber sqrt(d^2 + c^2) - c (the official config's), or the mean squared error."""
    d = prediction.float() - target.float()
    if kind == "l2":
        return d.pow(2).mean()
    return ((d.pow(2) + huber_c**2).sqrt() - huber_c).mean()


def sample_lcm(pipeline: Any, prompts: Sequence[str], *, steps: int, seed: int = 0, height: int | None = None,
               width: int | None = None, max_tokens: int = 300, output_type: str = "pil") -> Any:
    """``steps``-step samples of an LCM stage through its pipeline's ``LCMScheduler``, without guidance
    (the teacher's is distilled in), the initial noise drawn from ``seed`` as ``sample`` draws it."""
    from pixart.diffusion.sampling import run_pipeline

    if not isinstance(pipeline.scheduler, LCMScheduler):
        raise TypeError(f"an LCM stage samples with its LCMScheduler, not {type(pipeline.scheduler).__name__}")
    return run_pipeline(pipeline, prompts, seed=seed, max_tokens=max_tokens, guidance_scale=1.0, height=height,
                        width=width, output_type=output_type, num_inference_steps=steps)
