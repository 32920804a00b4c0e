"""The sample grid of a stage: held-out prompts through the exported pipeline, one PNG.

What a person looks at first (MLflow run, Prefect UI, the stage folder): fixed prompts and seed, so
grids of successive stages compare image by image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

GRID_FILE = "samples.png"


def tile(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def sample_grid(pipeline_dir: Path, prompts: Sequence[str], pixels: int, *, max_tokens: int, seed: int = 0,
                precision: str = "fp32") -> Image.Image:
    """The stage's own sampler (``StageSampler``) at its default steps, on ``run_device()`` in
    ``precision``, the profile's ``train.precision``."""
    from pixart.diffusion.sampling import DEFAULT_CFG, DEFAULT_STEPS
    from pixart.diffusion.stage_sampler import StageSampler
    from pixart.models.pipeline import load_pipeline

    pipeline, sampler = load_pipeline(pipeline_dir, precision=precision), StageSampler.of(pipeline_dir)
    images = sampler.sample(pipeline, prompts, steps=sampler.steps(None, DEFAULT_STEPS), cfg=DEFAULT_CFG, seed=seed,
                            height=pixels, width=pixels, max_tokens=max_tokens)
    return tile(images)
