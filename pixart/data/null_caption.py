"""The null caption stored beside a feature cache: T5 of "" at the cache's max tokens.

Caption dropout replaces captions with it during training (paper: 10 %) and the sampler uses it as the
negative prompt, so training never needs the text encoder in memory (T5-XXL is ~10 GB).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE = "null_caption.safetensors"


def save_null_caption(cache_dir: Path, features: torch.Tensor, mask: torch.Tensor) -> None:
    """Keep only the real tokens, like the cache's own text features."""
    length = int(mask.sum())
    save_file({"text": features[:, :length].float().contiguous(), "mask": mask[:, :length].long().contiguous()},
              Path(cache_dir) / FILE)


def load_null_caption(cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = Path(cache_dir) / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the features stage writes it")
    tensors = load_file(path)
    return tensors["text"], tensors["mask"]
