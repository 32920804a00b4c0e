"""Save and load the whole model as a diffusers ``PixArtSigmaPipeline`` folder, atomically.

``model_index.json`` names the transformer as ``["pixart.models.transformer", "PixArtSigmaTransformer"]``.
diffusers 0.42 resolves a library outside its own from ``sys.modules`` only (it never imports a module a
repository names), so ``import pixart.models`` must precede ``PixArtSigmaPipeline.from_pretrained``;
``load_pipeline`` does that.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PixArtSigmaPipeline, SchedulerMixin
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pixart import atomic
from pixart.diffusion.schedule import dpm_solver_scheduler
from pixart.models.transformer import PixArtSigmaTransformer


def save_pipeline(
    directory: str | Path,
    transformer: PixArtSigmaTransformer,
    vae: AutoencoderKL,
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scheduler: SchedulerMixin,
) -> Path:
    """Write a diffusers-format pipeline folder (safetensors) to ``directory``; a crash leaves the old
    folder or the new one, never half of it."""
    pipeline = PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    directory = Path(directory)
    with atomic.folder(directory) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    return directory


def load_pipeline(directory: str | Path, *, torch_dtype: torch.dtype | None = None) -> PixArtSigmaPipeline:
    """Load a pipeline folder offline-capable, KV compression included. A stage folder whose
    ``stage.json`` holds its training latents' ``latent_range`` samples with x0 kept inside it."""
    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(f"{directory} is not a pipeline folder: no model_index.json")
    pipeline = PixArtSigmaPipeline.from_pretrained(directory, torch_dtype=torch_dtype)
    stage_file = directory / "stage.json"
    latent_range = json.loads(stage_file.read_text()).get("latent_range") if stage_file.is_file() else None
    if latent_range is not None:
        pipeline.scheduler = dpm_solver_scheduler(latent_range)
    return pipeline
