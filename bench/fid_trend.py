"""Seconds per FID of a PixEval-sized image set against a fixed reference: the D×D form
(`frechet_distance`) vs the N×N Gram form (`frechet_distance_to`) that the bootstrap of
`pixart.eval.trend` resamples a thousand times, and the value both give.

    .venv/bin/python bench/fid_trend.py --images 48 --dim 1280
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pixart.eval.fid import compute_statistics, frechet_distance, frechet_distance_to
from pixart.eval.trend import N_RESAMPLES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="generated images (PixEval tiny: 48)")
    parser.add_argument("--reference", type=int, default=180, help="reference images (tiny: ~180)")
    parser.add_argument("--dim", type=int, default=1280, help="feature size (EfficientNet-lite0: 1280)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    reference = compute_statistics(rng.normal(size=(args.reference, args.dim)))
    images = rng.normal(size=(args.images, args.dim)) + 0.1

    def timed(fn) -> tuple[float, float]:
        times, value = [], 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times), value

    full, full_value = timed(lambda: frechet_distance(compute_statistics(images), reference))
    gram, gram_value = timed(lambda: frechet_distance_to(images, reference))
    print(f"N={args.images} D={args.dim}, median of {args.repeats}")
    print(f"  D x D form (frechet_distance):    {full:.4f} s   FID {full_value:.4f}")
    print(f"  N x N form (frechet_distance_to): {gram:.4f} s   FID {gram_value:.4f}")
    fids = 2 * N_RESAMPLES  # the bootstrap recomputes both stages' FIDs on every resample
    print(f"  speed-up {full / gram:.0f}x; a {N_RESAMPLES}-resample bootstrap of two stages: "
          f"{fids * full / 60:.1f} min vs {fids * gram:.1f} s")


if __name__ == "__main__":
    main()
