"""The on-disk dataset: the official PixArt layout.

A dataset folder holds ``data_info.json`` — a list of entries with the official PixArt-Σ keys
(``path``, ``prompt`` for the raw caption, ``sharegpt4v`` for the dense caption, ``height``,
``width``, ``ratio`` = height / width) — and an image folder that ``path`` points into, relative
to the dataset folder. We add ``quality`` ("high" | "low") and, for generated data, ``scene``
(background and objects, ``pixart.data.scenes.Scene``) so that PixEval's alignment judge can
train from the format alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixart import atomic
from pixart.data.scenes import Scene

DATA_INFO = "data_info.json"
IMAGES = "images"
CaptionKind = Literal["raw", "dense"]


class Entry(BaseModel):
    """One image of a dataset, as stored in data_info.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Image path relative to the dataset folder.")
    prompt: str = Field(description="The raw caption (official key).")
    sharegpt4v: str = Field("", description="The dense caption (official PixArt-Σ key); '' when absent.")
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    ratio: float = Field(gt=0, description="height / width, as in the official data_info.")
    quality: Literal["high", "low"] = "high"
    scene: Scene | None = None

    def caption(self, kind: CaptionKind) -> str:
        """The raw (``prompt``) or dense (``sharegpt4v``) caption."""
        if kind == "raw":
            return self.prompt
        if kind == "dense":
            return self.sharegpt4v
        raise ValueError(f"caption kind: '{kind}' is not 'raw' or 'dense'")


class DatasetError(ValueError):
    """A dataset folder is missing or malformed; the message names the file and the entry."""


def load_dataset(dataset_dir: Path) -> list[Entry]:
    """Read and validate ``dataset_dir/data_info.json``."""
    info = Path(dataset_dir) / DATA_INFO
    try:
        raw = json.loads(info.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{info}: not found (is {dataset_dir} a dataset folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{info}: not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise DatasetError(f"{info}: expected a list of entries, got {type(raw).__name__}")
    entries = []
    for i, item in enumerate(raw):
        try:
            entries.append(Entry.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            raise DatasetError(f"{info}: entry {i}: {field}: {first['msg']}") from None
    return entries


def write_data_info(dataset_dir: Path, entries: list[Entry]) -> None:
    """Atomically (re)write ``data_info.json``; the images must already be in place."""
    payload = [e.model_dump(exclude_none=True) for e in entries]
    atomic.write_text(Path(dataset_dir) / DATA_INFO, json.dumps(payload, indent=1) + "\n")


def dataset_version(dataset_dir: Path) -> str:
    """Content hash of data_info.json and every image it lists, in order (sha256 hex)."""
    dataset_dir = Path(dataset_dir)
    digest = hashlib.sha256((dataset_dir / DATA_INFO).read_bytes())
    for entry in load_dataset(dataset_dir):
        digest.update(entry.path.encode() + b"\0")
        digest.update(hashlib.sha256((dataset_dir / entry.path).read_bytes()).digest())
    return digest.hexdigest()
