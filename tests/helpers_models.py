"""Tiny-model builders shared by test files (plain functions; the lead owns conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CAPTIONS = [
    f"a {size} {colour} {shape} on the {place}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square", "triangle")
    for place in ("left", "right", "top", "bottom")
]

# debug pipelines render 32 px images: tiny VAE latents of 8, a 4 x 4 token grid at patch 2
DEBUG_IMAGE_SIDE = 32
DEBUG_LATENT_SIDE = 8


def debug_parts(tokenizer_dir: Path, *, kv_compress: bool = True, seed: int = 0) -> dict[str, Any]:
    """The five components of a debug-spec PixArtSigmaPipeline, randomly initialised and seeded."""
    from pixart.diffusion.schedule import dpm_solver_scheduler
    from pixart.models.builders import TINY_VAE_CONFIGS, build_text_encoder, build_vae, train_tokenizer
    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer, pe_interpolation

    spec = get_spec("debug")
    tokenizer = train_tokenizer(CAPTIONS, tokenizer_dir, vocab_size=48)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = build_transformer(
            spec,
            sample_size=DEBUG_LATENT_SIDE,
            interpolation_scale=pe_interpolation(256),
            kv_compress_layers=spec.kv_compress_layers if kv_compress else None,
        )
    return {
        "transformer": transformer.eval(),
        "vae": build_vae(TINY_VAE_CONFIGS["new"], seed=seed).eval(),
        "text_encoder": build_text_encoder(spec, vocab_size=len(tokenizer), seed=seed),
        "tokenizer": tokenizer,
        "scheduler": dpm_solver_scheduler(),
    }


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Add seeded noise to every parameter, so that a load that drops weights cannot pass for exact."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def write_stage_info(folder: Path, stage: str, profile: str = "smoke", model_version: str | None = None) -> None:
    """The ``stage.json`` a finished stage ``stage`` of ``profile`` would leave in ``folder``."""
    from pixart.config import load_profile
    from pixart.stage_info import StageInfo

    config = load_profile(profile)[1].stages[stage]
    StageInfo(stage=stage, parent=config.init_from, parent_version=None, profile=profile, config=config,
              step=config.steps, data_version="test", mlflow_run_id=None, latent_range=None,
              model_version=model_version).write(folder)
