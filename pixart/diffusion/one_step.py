"""The one-step generator of DMD: x0 = (z - sqrt(1 - abar_T) eps_hat(z, T)) / sqrt(abar_T) at T = t_gen.

DPM-Solver with ``num_inference_steps=1`` starts at t = 999 and applies CFG, so it does not reproduce
the generator. Sampling instead runs the same DPM-Solver++ scheduler on the custom timestep list
``[t_gen]`` with guidance 1 (the generator was distilled with the teacher's guidance baked in): its one
first-order step to sigma = 0 is exactly the formula above. A checkpoint is one-step when its
``stage.json`` comes from a ``dmd`` stage; ``one_step_t_gen`` reads its T.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pixart.diffusion.schedule import Schedule, linear_schedule, use_dpm_solver
from pixart.stage_info import StageInfo

if TYPE_CHECKING:
    from diffusers import PixArtSigmaPipeline

_DEFAULT_SCHEDULE = linear_schedule()


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int,
                 schedule: Schedule = _DEFAULT_SCHEDULE) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), per sample for a (B,) ``t`` or one int ``t``."""
    t = torch.as_tensor(t, device=x_t.device).reshape(-1)
    abar = schedule.alphas_cumprod.to(x_t.device)[t].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def one_step_t_gen(pipeline_dir: str | Path) -> int | None:
    """The generator timestep of a one-step (DMD) checkpoint folder; None for a multi-step model."""
    return StageInfo.read(pipeline_dir).t_gen if StageInfo.exists(pipeline_dir) else None


def sample_one_step(
    pipeline_or_path: PixArtSigmaPipeline | str | Path,
    prompts: Sequence[str],
    *,
    t_gen: int,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    max_tokens: int = 300,
    output_type: str = "pil",
) -> Any:
    """One-step samples of a DMD generator: PIL images (``output_type="pil"``) or the (B, C, h, w)
    latents (``"latent"``). The initial noise is the pipeline's, drawn from ``seed`` as ``sample`` does."""
    from pixart.diffusion.sampling import run_pipeline

    if not 1 <= t_gen < 1000:
        raise ValueError(f"t_gen: {t_gen} is not in 1..999")
    if isinstance(pipeline_or_path, (str, Path)):
        from pixart.models.pipeline import load_pipeline

        pipeline = load_pipeline(pipeline_or_path)
    else:
        pipeline = pipeline_or_path
    use_dpm_solver(pipeline)
    return run_pipeline(pipeline, prompts, seed=seed, max_tokens=max_tokens, guidance_scale=1.0, height=height,
                        width=width, output_type=output_type, timesteps=[t_gen])
