"""One image-batch convention for every PixEval metric: uint8 NHWC arrays or float NCHW in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Images = np.ndarray | torch.Tensor


def as_float_nchw(images: Images) -> torch.Tensor:
    """Return ``images`` as a float32 (N, 3, H, W) tensor in [0, 1].

    uint8 input is read as NHWC (what PIL / the sample grids give); float input as NCHW in [0, 1]
    (what a diffusers pipeline with ``output_type="pt"`` gives).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a numpy array or torch tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images: expected 4 dimensions (a batch), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise ValueError(
                f"images: uint8 batches are NHWC with 3 channels, got shape {tuple(images.shape)}"
            )
        return images.permute(0, 3, 1, 2).float().div(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images: expected uint8 or a float dtype, got {images.dtype}")
    if images.shape[1] != 3:
        raise ValueError(f"images: float batches are NCHW with 3 channels, got shape {tuple(images.shape)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images: float batches must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]")
    return images.float()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of an NCHW batch to ``size``×``size`` (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
