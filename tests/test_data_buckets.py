"""Aspect-ratio buckets match the official tables; the batch sampler resumes exactly."""

from __future__ import annotations

import ast
import importlib.util
import itertools
from pathlib import Path

import pytest

from pixart.data.buckets import AspectRatioBatchSampler, aspect_ratio_buckets, nearest_bucket


def _diffusers_table(module: str, name: str) -> dict[float, tuple[int, int]]:
    """A bin table from diffusers' PixArt pipelines, read from source (importing them costs ~9 s)."""
    origin = Path(importlib.util.find_spec("diffusers").origin).parent / "pipelines/pixart_alpha" / f"{module}.py"
    for node in ast.parse(origin.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return {float(k): (int(h), int(w)) for k, (h, w) in ast.literal_eval(node.value).items()}
    raise LookupError(f"{name} not in {origin}")


def test_buckets_equal_the_official_40_ratio_table():
    assert aspect_ratio_buckets(2048, 128) == _diffusers_table("pipeline_pixart_sigma", "ASPECT_RATIO_2048_BIN")
    ours = aspect_ratio_buckets(1024, 64)
    assert len(ours) == 40 and min(ours) == 0.25 and max(ours) == 4.0
    # diffusers' 1024 and 256 binning tables are 33-size subsets of the official 40
    assert _diffusers_table("pipeline_pixart_alpha", "ASPECT_RATIO_1024_BIN").items() <= ours.items()
    tiny = _diffusers_table("pipeline_pixart_alpha", "ASPECT_RATIO_256_BIN")
    assert len(tiny) == 33 and tiny.items() <= aspect_ratio_buckets(256, 16).items()


def test_tiny_buckets_respect_the_quantum():
    buckets = aspect_ratio_buckets(128, 16)
    assert buckets[1.0] == (128, 128) and 8 <= len(buckets) < 40
    for h, w in buckets.values():
        assert h % 16 == 0 and w % 16 == 0 and 0.9 * 128**2 <= h * w <= 128**2
    with pytest.raises(ValueError, match="multiple"):
        aspect_ratio_buckets(100, 16)


def test_nearest_bucket():
    buckets = aspect_ratio_buckets(1024, 64)
    assert nearest_bucket(1000, 1000, buckets) == 1.0
    assert nearest_bucket(300, 1200, buckets) == 0.25
    assert nearest_bucket(1920, 1080, buckets) == 1.75


def _ratios() -> list[float]:
    return [1.0] * 37 + [0.5] * 21 + [2.0] * 13 + [4.0] * 2


def test_batches_share_one_ratio_and_epochs_reshuffle():
    ratios = _ratios()
    sampler = AspectRatioBatchSampler(ratios, batch_size=4, seed=7)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 9 + 5 + 3  # drop_last: the two 4.0 items never fill a batch
    for batch in first:
        assert len(batch) == 4 and len({ratios[i] for i in batch}) == 1
    assert first != second and sorted(map(sorted, first)) != sorted(map(sorted, second))
    assert list(AspectRatioBatchSampler(ratios, 4, seed=7)) == first


def test_resume_mid_epoch_gives_the_same_batches_as_uninterrupted():
    ratios = _ratios()
    uninterrupted = AspectRatioBatchSampler(ratios, batch_size=4, seed=1)
    expected = list(uninterrupted) + list(uninterrupted)

    run = AspectRatioBatchSampler(ratios, batch_size=4, seed=1)
    list(run)  # epoch 0
    seen = list(itertools.islice(iter(run), 6))  # crash six batches into epoch 1
    state = run.state_dict()

    resumed = AspectRatioBatchSampler(ratios, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert expected[len(expected) // 2:] == seen + rest
    assert state == {"epoch": 1, "position": 6, "seed": 1}
    with pytest.raises(ValueError, match="seed"):
        AspectRatioBatchSampler(ratios, 4, seed=2).load_state_dict(state)


def test_sampler_rejects_batch_larger_than_every_bucket():
    with pytest.raises(ValueError, match="batch_size"):
        AspectRatioBatchSampler([1.0, 2.0], batch_size=3, seed=0)
