"""Text-to-image sampling through diffusers' PixArtSigmaPipeline with DPM-Solver (paper: 20 steps, CFG 4.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline
from PIL import Image

from pixart.diffusion.schedule import dpm_solver_scheduler

DEFAULT_STEPS = 20
DEFAULT_CFG = 4.5


def sample(
    pipeline_or_parts: PixArtSigmaPipeline | Mapping[str, Any] | str | Path,
    prompts: Sequence[str],
    *,
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    max_tokens: int = 300,
) -> list[Image.Image]:
    """Images for ``prompts`` from a pipeline, its five components (transformer, vae, text_encoder,
    tokenizer, scheduler) or a saved pipeline folder; negative prompt "" (the null caption); deterministic
    for a given seed. Height / width default to the transformer's sample size times the VAE factor."""
    if isinstance(pipeline_or_parts, (str, Path)):
        from pixart.models.pipeline import load_pipeline

        pipeline = load_pipeline(pipeline_or_parts)
    elif isinstance(pipeline_or_parts, Mapping):
        pipeline = PixArtSigmaPipeline(**pipeline_or_parts)
    else:
        pipeline = pipeline_or_parts
    if not isinstance(pipeline.scheduler, DPMSolverMultistepScheduler):
        pipeline.scheduler = dpm_solver_scheduler()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = pipeline(
        prompt=list(prompts),
        negative_prompt="",
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=generator,
        height=height,
        width=width,
        max_sequence_length=max_tokens,
        # our sizes are not diffusers' aspect-ratio bins, and caption cleaning needs bs4 / ftfy
        use_resolution_binning=False,
        clean_caption=False,
        output_type="pil",
    )
    return result.images
