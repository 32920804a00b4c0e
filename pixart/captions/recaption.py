"""Recaptioning a dataset folder: every image's dense caption, written by a captioner into a
``CaptionStore``, beside (never over) the raw caption in ``data_info.json``.

Rank r of a world of n captions the images i with i % n == r, skipping those whose content hash the
store already holds (a resumed or repeated run); ``captions_of`` then reads one split's captions back
by image hash, and ``dense_captions`` maps them onto the split's paths for the feature cache.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image
from tqdm.auto import tqdm

from pixart.captions.store import CaptionStore
from pixart.data.format import DatasetError, load_dataset


class Captioner(Protocol):
    def caption(self, images: Sequence[Image.Image]) -> list[str]: ...


@dataclass(frozen=True)
class RecaptionReport:
    images: int  # this rank's share of the dataset
    already_done: int  # whose caption the store held
    captioned: int  # distinct images captioned by this run (an image stored twice is captioned once)
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0


def image_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image_hashes(dataset_dir: Path) -> dict[str, str]:
    """Entry path -> content hash, in data_info.json's order."""
    return {e.path: image_sha256(Path(dataset_dir) / e.path) for e in load_dataset(dataset_dir)}


def recaption_dataset(dataset_dir: Path, captioner: Captioner, store: CaptionStore, *, batch_size: int,
                      rank: int = 0, world: int = 1, desc: str = "recaption",
                      hashes: Mapping[str, str] | None = None) -> RecaptionReport:
    """Caption this rank's images that the store lacks, ``batch_size`` at a time, each batch stored
    before the next begins; a progress bar shows images/s. ``hashes``: the split's ``image_hashes``,
    when the caller has them."""
    dataset_dir = Path(dataset_dir)
    mine = list((hashes or image_hashes(dataset_dir)).items())[rank::world]
    done = store.read()
    todo, seen = [], set(done)
    for path, digest in mine:
        if digest not in seen:  # an image stored twice in the dataset is captioned once
            todo.append((path, digest))
            seen.add(digest)
    start = time.perf_counter()
    with tqdm(total=len(todo), desc=desc, unit="img", leave=False, disable=rank != 0) as bar:
        for first in range(0, len(todo), batch_size):
            batch = todo[first : first + batch_size]
            images = []
            for path, _ in batch:
                with Image.open(dataset_dir / path) as im:
                    images.append(im.convert("RGB"))
            captions = captioner.caption(images)
            store.append((digest, path, caption) for (path, digest), caption in zip(batch, captions, strict=True))
            bar.update(len(batch))
    already = sum(digest in done for _, digest in mine)
    return RecaptionReport(len(mine), already, len(todo), time.perf_counter() - start)


def split_captions(dataset_dir: Path, captions: Mapping[str, str], *, hint: str,
                   hashes: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(path, content hash, caption) of every image of a split, in data_info.json's order; an image
    without a caption is refused by name, with ``hint`` saying what to run."""
    rows = []
    for path, digest in (hashes or image_hashes(dataset_dir)).items():
        if digest not in captions:
            raise DatasetError(f"{Path(dataset_dir) / path}: no recaption of this image (sha256 {digest[:12]}): {hint}")
        rows.append((path, digest, captions[digest]))
    return rows


def captions_of(dataset_dir: Path, store_captions: Mapping[str, str],
                hashes: Mapping[str, str] | None = None) -> dict[str, str]:
    """The split's captions out of a store's: content hash -> caption."""
    rows = split_captions(dataset_dir, store_captions, hint="a rank did not finish; run the recaption stage again",
                          hashes=hashes)
    return {digest: caption for _, digest, caption in rows}


def dense_captions(dataset_dir: Path, captions: Mapping[str, str],
                   hashes: Mapping[str, str] | None = None) -> dict[str, str]:
    """Entry path -> recaption, from a split's hash -> caption map (the recaption stage's output)."""
    rows = split_captions(dataset_dir, captions, hint="the image changed after the recaption stage ran; dvc repro",
                          hashes=hashes)
    return {path: caption for path, _, caption in rows}
