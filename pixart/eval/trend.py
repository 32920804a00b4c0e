"""The weak-to-strong trend as numbers with error bars, by paired bootstrap: FID(weak) − FID(strong),
and the alignment a stage gains over the stage it starts from (the paper's caption claim).

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


def alignment_gain(
    before: np.ndarray, after: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """``alignment_gain`` = mean alignment(after) − mean alignment(before) of two paired per-prompt
    alignment vectors (entry i of each from the same prompt and seed), its central ``INTERVAL``
    bootstrap interval ``alignment_gain_low`` .. ``alignment_gain_high`` and ``alignment_gain_share``:
    the share of resamples in which after beats before."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 1:
        raise ValueError(f"paired alignments differ in shape or are not vectors: {before.shape} vs {after.shape}")
    diff = after - before
    rows = np.random.default_rng(seed).integers(0, len(diff), (n_resamples, len(diff)))
    gains = diff[rows].mean(axis=1)
    tail = (1 - INTERVAL) / 2 * 100
    return {
        "alignment_gain": float(diff.mean()),
        "alignment_gain_low": float(np.percentile(gains, tail)),
        "alignment_gain_high": float(np.percentile(gains, 100 - tail)),
        "alignment_gain_share": float((gains > 0).mean()),
    }
