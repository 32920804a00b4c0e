"""The weak-to-strong trend as a number with an error bar: FID(weak) − FID(strong), paired bootstrap.

FID over a few dozen images moves by tens of points with the image sample alone, so a single
difference between two stages says little. Both stages render the same prompts with the same seeds,
so image i of one stage pairs with image i of the other: resampling prompt indices with replacement,
the same indices for both, and recomputing both FIDs against the fixed reference gives the spread of
the difference that the prompt sample causes (not the spread across training seeds, which takes
retraining).
"""

from __future__ import annotations

import numpy as np

from pixart.eval.fid import Statistics, frechet_distance_to

N_RESAMPLES = 1000
INTERVAL = 0.95


def fid_gain(
    weak: np.ndarray, strong: np.ndarray, reference: Statistics, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """``fid_gain`` = FID(weak) − FID(strong) of two paired (N, D) feature sets (row i of each from
    the same prompt and seed), its central ``INTERVAL`` bootstrap interval ``fid_gain_low`` ..
    ``fid_gain_high``, and ``fid_gain_share``: the share of resamples in which strong beats weak."""
    weak, strong = np.asarray(weak, dtype=np.float64), np.asarray(strong, dtype=np.float64)
    if weak.shape != strong.shape:
        raise ValueError(f"paired feature sets differ in shape: {weak.shape} vs {strong.shape}")
    n = weak.shape[0]
    rng = np.random.default_rng(seed)
    gains = np.empty(n_resamples)
    for i in range(n_resamples):
        rows = rng.integers(0, n, n)
        gains[i] = frechet_distance_to(weak[rows], reference) - frechet_distance_to(strong[rows], reference)
    tail = (1 - INTERVAL) / 2 * 100
    return {
        "fid_gain": frechet_distance_to(weak, reference) - frechet_distance_to(strong, reference),
        "fid_gain_low": float(np.percentile(gains, tail)),
        "fid_gain_high": float(np.percentile(gains, 100 - tail)),
        "fid_gain_share": float((gains > 0).mean()),
    }
