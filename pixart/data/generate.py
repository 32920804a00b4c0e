"""The generated captioned dataset of the tiny profiles, written in the official PixArt layout."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pixart import atomic
from pixart.data.format import IMAGES, Entry, write_data_info
from pixart.data.scenes import (
    SceneSpec,
    degrade,
    dense_caption,
    raw_caption,
    render_scene,
    sample_ratio,
    sample_scene,
)


def image_size(ratio: float, short_side: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``short_side`` and height / width ~ ``ratio``."""
    if ratio >= 1:
        return round(short_side * ratio), short_side
    return short_side, round(short_side / ratio)


def generate_entry(index: int, *, seed: int, split: str, resolution_px: int, spec: SceneSpec) -> tuple[Entry, Image.Image]:
    """Entry ``index`` of a split and its PIL image; depends only on (seed, split, index, spec)."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    scene = sample_scene(rng, spec)
    height, width = image_size(sample_ratio(rng, spec), resolution_px)
    image = render_scene(scene, height, width, spec)
    low = bool(rng.random() < spec.low_quality_fraction)
    if low:
        image = degrade(image, rng)
    entry = Entry(
        path=f"{IMAGES}/{split}-{index:06d}.png",
        prompt=raw_caption(scene, rng, spec),
        sharegpt4v=dense_caption(scene),
        height=height,
        width=width,
        ratio=height / width,
        quality="low" if low else "high",
        scene=scene,
    )
    return entry, image


def generate_dataset(
    out_dir: Path, *, n: int, seed: int, resolution_px: int, spec: SceneSpec | None = None, split: str = "train"
) -> list[Entry]:
    """Render ``n`` scenes into a new dataset folder ``out_dir`` (replaced atomically as a whole).

    ``resolution_px`` is the shorter side of every stored image; stages downsample from it, so it
    must be at least the largest stage's resolution. Same arguments give identical bytes.
    """
    if n < 1 or resolution_px < 1:
        raise ValueError(f"n={n}, resolution_px={resolution_px}: both must be positive")
    spec = spec or SceneSpec()
    entries = []
    with atomic.folder(Path(out_dir)) as tmp:
        (tmp / IMAGES).mkdir()
        for index in tqdm(range(n), desc=f"generate {split}", unit="img", leave=False):
            entry, image = generate_entry(index, seed=seed, split=split, resolution_px=resolution_px, spec=spec)
            image.save(tmp / entry.path, format="PNG")
            entries.append(entry)
        write_data_info(tmp, entries)
    return entries
