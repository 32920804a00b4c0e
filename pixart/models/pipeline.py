"""Save and load the whole model as a diffusers ``PixArtSigmaPipeline`` folder, atomically.

``model_index.json`` names the transformer as ``["pixart.models.transformer", "PixArtSigmaTransformer"]``.
diffusers 0.42 resolves a library outside its own from ``sys.modules`` only (it never imports a module a
repository names), so ``import pixart.models`` must precede ``PixArtSigmaPipeline.from_pretrained``;
``load_pipeline`` does that.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, SchedulerMixin
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pixart import atomic
from pixart.diffusion.schedule import dpm_solver_scheduler
from pixart.models.builders import precision_dtype
from pixart.models.transformer import PixArtSigmaTransformer
from pixart.stage_info import StageInfo


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


def run_device() -> torch.device:
    """Where this process runs its models: the settings' device (``PIXART_DEVICE``, auto: cuda when
    there is one), and under a launcher the GPU of its local rank."""
    from pixart.settings import get_settings

    if get_settings().resolved_device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_pipeline(
    directory: str | Path, *, device: str | torch.device | None = None, precision: str = "fp32",
    text_encoder: bool = True,
) -> PixArtSigmaPipeline:
    """Load a pipeline folder offline-capable, KV compression included, onto ``device`` (default:
    ``run_device()``). ``precision`` (a profile's ``train.precision``) is the dtype of the text encoder
    and the transformer: diffusers casts the prompt features to the text encoder's dtype and draws the
    latents in it, so the two must agree. The VAE stays fp32: SDXL's VAE is unstable in half
    precision (in fp16 its activations overflow to NaN images; diffusers force-upcasts it), and it is
    small. ``text_encoder`` False leaves T5 and its tokenizer out, for callers that pass cached
    caption features (~10 GB less at xl). A stage folder whose ``stage.json`` holds its training
    latents' ``latent_range`` samples with x0 kept inside it."""
    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(f"{directory} is not a pipeline folder: no model_index.json")
    dtype = precision_dtype(precision)
    without = {} if text_encoder else {"text_encoder": None, "tokenizer": None}
    pipeline = PixArtSigmaPipeline.from_pretrained(
        directory, dtype={"transformer": dtype, "text_encoder": dtype, "default": torch.float32}, **without
    )
    latent_range = StageInfo.read(directory).latent_range if StageInfo.exists(directory) else None
    # an LCM stage keeps its LCMScheduler: the range is the DPM-Solver's clamp
    if latent_range is not None and isinstance(pipeline.scheduler, DPMSolverMultistepScheduler):
        pipeline.scheduler = dpm_solver_scheduler(latent_range.model_dump())
    return pipeline.to(device or run_device())
