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
    """The multi-step sampler (DPM-Solver, CFG) for a stage; the one-step sampler for a DMD generator.
    It runs on ``run_device()`` in ``precision``, the profile's ``train.precision``."""
    from pixart.diffusion.one_step import one_step_t_gen, sample_one_step
    from pixart.diffusion.sampling import sample
    from pixart.models.pipeline import load_pipeline

    pipeline, t_gen = load_pipeline(pipeline_dir, precision=precision), one_step_t_gen(pipeline_dir)
    size = {"seed": seed, "height": pixels, "width": pixels, "max_tokens": max_tokens}
    images = sample(pipeline, prompts, **size) if t_gen is None else sample_one_step(pipeline, prompts, t_gen=t_gen, **size)
    return tile(images)
