"""Text-to-image sampling through diffusers' PixArtSigmaPipeline with DPM-Solver (paper: 20 steps, CFG 4.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import PixArtSigmaPipeline
from PIL import Image

from pixart.diffusion.schedule import use_dpm_solver
from pixart.models.builders import encode_captions, with_null_caption

DEFAULT_STEPS = 20
DEFAULT_CFG = 4.5


@torch.no_grad()
def prompt_embeddings(
    pipeline: PixArtSigmaPipeline, prompts: Sequence[str], max_tokens: int, *, negative: bool = True
) -> dict[str, Any]:
    """The pipeline's prompt arguments as text features padded to the longest caption, not to
    ``max_tokens`` as the pipeline pads them: the same images (padding is masked out of the encoder's
    and the cross-attention's softmax), with the text encoder and cross-attention run on ~25 tokens
    instead of 300 — 1.2x faster sampling at 256 px, 2.7x at 64 px (tiny, 2 cores). ``negative``
    adds the empty caption, the negative prompt of classifier-free guidance."""
    encoder, tokenizer = pipeline.text_encoder, pipeline.tokenizer
    text, mask = encode_captions(encoder, tokenizer, list(prompts), max_tokens, pad_to_max=False)
    if not negative:
        return {"prompt": None, "prompt_embeds": text, "prompt_attention_mask": mask}
    null, null_mask = encode_captions(encoder, tokenizer, [""], max_tokens, pad_to_max=False)
    text, mask, null, null_mask = with_null_caption(text, mask, null, null_mask)
    return {"prompt": None, "prompt_embeds": text, "prompt_attention_mask": mask, "negative_prompt": None,
            "negative_prompt_embeds": null, "negative_prompt_attention_mask": null_mask}


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
    for a given seed (``image_generators``). Height / width default to the transformer's sample size
    times the VAE factor."""
    if isinstance(pipeline_or_parts, (str, Path)):
        from pixart.models.pipeline import load_pipeline

        pipeline = load_pipeline(pipeline_or_parts)
    elif isinstance(pipeline_or_parts, Mapping):
        pipeline = PixArtSigmaPipeline(**pipeline_or_parts)
    else:
        pipeline = pipeline_or_parts
    use_dpm_solver(pipeline)
    return run_pipeline(pipeline, prompts, seed=seed, max_tokens=max_tokens, guidance_scale=cfg, height=height,
                        width=width, num_inference_steps=steps)


def image_generators(seed: int, n: int) -> list[torch.Generator]:
    """One generator per image, image k seeded ``seed + k``: an image depends on its prompt and seed,
    never on the batch it is drawn in, so a batch size is a speed knob only (PixEval renders 256 px in
    batches of 8, 1.2x faster per image than 32 on 2 cores, with the same images)."""
    return [torch.Generator(device="cpu").manual_seed(seed + k) for k in range(n)]


def run_pipeline(pipeline: PixArtSigmaPipeline, prompts: Sequence[str], *, seed: int, max_tokens: int,
                 guidance_scale: float, height: int | None, width: int | None, output_type: str = "pil",
                 **scheduling: Any) -> Any:
    """The pipeline call every sampler makes: padded-to-longest prompt features (the null caption as
    negative prompt when guided), per-image noise from ``image_generators``; ``scheduling`` is the
    scheduler's say (``num_inference_steps`` or ``timesteps``)."""
    result = pipeline(
        **prompt_embeddings(pipeline, prompts, max_tokens, negative=guidance_scale > 1),
        guidance_scale=guidance_scale,
        generator=image_generators(seed, len(prompts)),
        height=height,
        width=width,
        use_resolution_binning=False,  # our sizes are not diffusers' aspect-ratio bins
        output_type=output_type,
        **scheduling,
    )
    return result.images
