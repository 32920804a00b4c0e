"""Aspect-ratio buckets and the single-ratio batch sampler of multi-aspect training.

The official table (PixArt-Σ's ASPECT_RATIO_1024, inherited from SDXL) holds 40 sizes with sides
in multiples of 64 px, height / width from 0.25 to 4, and pixel counts within 90-100 % of 1024².
The rule below regenerates it exactly from (base, quantum): every size on the quantum grid in that
area band and ratio range, keeping the ``n_ratios`` closest in area to base² (SDXL's table lacks
the portrait twin of 704x1344, the one size furthest from base²; ties therefore go to landscape).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

Buckets = dict[float, tuple[int, int]]


def aspect_ratio_buckets(
    base_px: int, quantum_px: int, *, n_ratios: int = 40, min_ratio: float = 0.25, max_ratio: float = 4.0,
    area_band: tuple[float, float] = (0.9, 1.0),
) -> Buckets:
    """{round(h / w, 2): (h, w)} with sides multiples of ``quantum_px`` and area ~ ``base_px``²."""
    if base_px % quantum_px or base_px <= 0 or quantum_px <= 0:
        raise ValueError(f"base_px={base_px} must be a positive multiple of quantum_px={quantum_px}")
    target = base_px * base_px
    lo, hi = area_band[0] * target, area_band[1] * target
    longest = int((hi * max(max_ratio, 1 / min_ratio)) ** 0.5)
    sides = range(quantum_px, longest + 1, quantum_px)
    candidates = []
    for h in sides:
        for w in sides:
            if lo <= h * w <= hi and min_ratio <= h / w <= max_ratio:
                # sort key: area distance, then landscape (h <= w) before portrait
                candidates.append((abs(target - h * w), h > w, h, w))
    buckets: Buckets = {}
    for _, _, h, w in sorted(candidates):
        key = round(h / w, 2)
        if key not in buckets and len(buckets) < n_ratios:
            buckets[key] = (h, w)
    return dict(sorted(buckets.items()))


def nearest_bucket(height: float, width: float, buckets: Buckets) -> float:
    """The bucket ratio closest to height / width (the official get_closest_ratio)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height, width: {height}x{width} must be positive")
    ratio = height / width
    return min(buckets, key=lambda r: abs(r - ratio))


class AspectRatioBatchSampler:
    """Batches of item indices that share one bucket ratio, shuffled per epoch from ``seed``.

    ``state_dict()`` holds (epoch, position): loading it into a fresh sampler yields exactly the
    batches an uninterrupted run would still have yielded, so a resumed stage sees the same data.
    Iterating runs to the end of the current epoch, then the next call starts the next epoch.
    """

    def __init__(self, ratios_per_item: Sequence[float], batch_size: int, seed: int, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} must be >= 1")
        self.ratios = list(ratios_per_item)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.epoch, self.position = 0, 0
        if not self._batches(0):
            raise ValueError(
                f"batch_size: {batch_size} leaves no full single-ratio batch among {len(self.ratios)} items"
            )

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[float, list[int]] = {}
        for i in rng.permutation(len(self.ratios)):
            groups.setdefault(self.ratios[int(i)], []).append(int(i))
        batches = []
        for ratio in sorted(groups):
            items = groups[ratio]
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        order = rng.permutation(len(batches))
        return [batches[int(i)] for i in order]

    def __len__(self) -> int:
        """Batches in one full epoch."""
        return len(self._batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """Where the sampler is: the epoch and the number of its batches already yielded."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; the seed must match the one that made it."""
        if state["seed"] != self.seed:
            raise ValueError(f"seed: checkpoint sampler seed {state['seed']} != {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
