"""Fréchet Inception Distance, computed here over features from any `FeatureBackbone`.

FID = |μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½). The trace of the matrix square root is taken as
Σ √λ over the eigenvalues of Σa^½ Σb Σa^½, which is symmetric PSD and has the same eigenvalues as
Σa Σb: this stays real and stable when the covariances are singular (fewer images than feature
dimensions), where ``scipy.linalg.sqrtm`` returns complex noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from pixart.eval.backbones import FeatureBackbone
from pixart.eval.images import Images


@dataclass(frozen=True)
class Statistics:
    """Mean (D,) and covariance (D, D) of a feature set, in float64."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def compute_statistics(features: np.ndarray | torch.Tensor) -> Statistics:
    """Mean and unbiased covariance of (N, D) features; N must be at least 2."""
    f = np.asarray(
        features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64
    )
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected (N >= 2, D), got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features: contain NaN or inf")
    return Statistics(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), count=f.shape[0])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: Statistics, b: Statistics) -> float:
    """Fréchet distance between two Gaussians given by their statistics."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"statistics have different feature sizes: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    root_a = _sqrt_psd(a.sigma)
    cross = np.linalg.eigvalsh(root_a @ b.sigma @ root_a)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    diff = a.mu - b.mu
    value = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_sqrt)
    # Rounding can leave a tiny negative number for identical sets; the distance itself is >= 0.
    return max(value, 0.0)


def frechet_distance_to(features: np.ndarray | torch.Tensor, reference: Statistics) -> float:
    """Fréchet distance of an (N, D) feature set to ``reference``, through the N×N Gram matrix.

    With X the centred features over √(N−1), Σ = XᵀX, and Σ^½ Σ_ref Σ^½ shares its nonzero
    eigenvalues with X Σ_ref Xᵀ: the same number as ``frechet_distance``, from an N×N eigenproblem
    instead of two D×D ones — what makes a bootstrap over a few dozen images cheap (D = 1280)."""
    f = np.asarray(
        features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64
    )
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] != reference.mu.shape[0]:
        raise ValueError(f"features: expected (N >= 2, {reference.mu.shape[0]}), got shape {f.shape}")
    mu = f.mean(axis=0)
    x = (f - mu) / np.sqrt(f.shape[0] - 1)
    cross = np.linalg.eigvalsh(x @ reference.sigma @ x.T)
    diff = mu - reference.mu
    value = float(
        diff @ diff + (x * x).sum() + np.trace(reference.sigma) - 2.0 * np.sqrt(np.clip(cross, 0.0, None)).sum()
    )
    return max(value, 0.0)


def fid(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(compute_statistics(features_a), compute_statistics(features_b))


def extract_features(images: Images, backbone: FeatureBackbone, batch_size: int = 32) -> torch.Tensor:
    """Backbone features (N, D) of an image batch, ``batch_size`` images at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [
        backbone.features(images[i : i + batch_size])
        for i in tqdm(range(0, len(images), batch_size), desc=f"{backbone.name} features", leave=False)
    ]
    return torch.cat(chunks)


def image_statistics(images: Images, backbone: FeatureBackbone, batch_size: int = 32) -> Statistics:
    """Statistics of an image set (uint8 NHWC or float NCHW in [0, 1]) under ``backbone``: compute a
    reference's once and compare many sets to it."""
    return compute_statistics(extract_features(images, backbone, batch_size))


def fid_from_images(
    images_a: Images, images_b: Images, backbone: FeatureBackbone, batch_size: int = 32
) -> float:
    """FID between two image sets (uint8 NHWC or float NCHW in [0, 1]) under ``backbone``."""
    return frechet_distance(
        image_statistics(images_a, backbone, batch_size), image_statistics(images_b, backbone, batch_size)
    )
