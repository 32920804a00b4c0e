"""The weak-to-strong FID gain and its paired bootstrap interval, on synthetic features and on real
images with a known order (the images themselves beat their blurred copies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixart.data.generate import generate_dataset
from pixart.eval.backbones import EfficientNetLite0
from pixart.eval.fid import compute_statistics, extract_features, frechet_distance_to
from pixart.eval.pixeval import reference_images
from pixart.eval.trend import alignment_gain, fid_gain

D = 32


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(D, D)) / np.sqrt(D)
    reference = compute_statistics(rng.normal(size=(400, D)) @ mix)
    near = rng.normal(size=(40, D)) @ mix + 0.1
    far = rng.normal(size=(40, D)) @ mix + 1.0
    return reference, near, far


def test_a_stage_closer_to_the_reference_gains_with_an_interval_above_zero(sets) -> None:
    reference, near, far = sets
    gain = fid_gain(far, near, reference, n_resamples=200)
    assert gain["fid_gain"] == pytest.approx(
        frechet_distance_to(far, reference) - frechet_distance_to(near, reference)
    )
    assert 0 < gain["fid_gain_low"] < gain["fid_gain"] < gain["fid_gain_high"]
    assert gain["fid_gain_share"] == 1.0
    # swapped, the loss is as clear
    loss = fid_gain(near, far, reference, n_resamples=200)
    assert loss["fid_gain_high"] < 0 and loss["fid_gain_share"] == 0.0


def test_two_samples_of_one_distribution_give_an_interval_around_zero(sets) -> None:
    reference, _, _ = sets
    rng = np.random.default_rng(5)
    mix = np.linalg.cholesky(reference.sigma + 1e-9 * np.eye(D))
    a, b = (rng.normal(size=(40, D)) @ mix.T + reference.mu for _ in range(2))
    gain = fid_gain(a, b, reference, n_resamples=300)
    assert gain["fid_gain_low"] < 0 < gain["fid_gain_high"]
    assert 0.05 < gain["fid_gain_share"] < 0.95


def test_real_images_gain_over_their_blurred_copies_and_the_reverse_loses(tmp_path) -> None:
    torch.set_num_threads(2)
    generate_dataset(tmp_path / "heldout", n=32, seed=0, resolution_px=64, split="heldout")
    images = reference_images(tmp_path / "heldout", 64)
    backbone = EfficientNetLite0()
    half = len(images) // 2
    reference = compute_statistics(extract_features(images[:half], backbone))
    strong = extract_features(images[half:], backbone).numpy()
    # the same images, row for row, blurred: what an under-trained stage's soft samples look like
    weak = extract_features(F.avg_pool2d(images[half:], 5, stride=1, padding=2), backbone).numpy()
    gain = fid_gain(weak, strong, reference, n_resamples=200)
    assert gain["fid_gain_low"] > 0 and gain["fid_gain_share"] == 1.0, gain
    assert fid_gain(strong, weak, reference, n_resamples=200)["fid_gain_high"] < 0


def test_unpaired_sets_are_refused(sets) -> None:
    reference, near, far = sets
    with pytest.raises(ValueError, match="paired feature sets differ in shape"):
        fid_gain(near, far[:-1], reference)


def test_the_alignment_gain_is_the_paired_mean_difference_with_its_interval() -> None:
    rng = np.random.default_rng(0)
    before = rng.uniform(0.1, 0.3, 64)
    after = before + rng.uniform(0.0, 0.4, 64)  # every prompt gains
    gain = alignment_gain(before, after, n_resamples=300)
    assert gain["alignment_gain"] == pytest.approx(float((after - before).mean()))
    assert 0 < gain["alignment_gain_low"] < gain["alignment_gain"] < gain["alignment_gain_high"]
    assert gain["alignment_gain_share"] == 1.0
    # pairing matters: the same numbers with the prompts' order shuffled spread wider
    unpaired = alignment_gain(before, rng.permutation(after), n_resamples=300)
    assert unpaired["alignment_gain_high"] - unpaired["alignment_gain_low"] > gain["alignment_gain_high"] - gain["alignment_gain_low"]
    noise = alignment_gain(before, rng.permutation(before), n_resamples=300)
    assert noise["alignment_gain_low"] < 0 < noise["alignment_gain_high"]
    with pytest.raises(ValueError, match="differ in shape"):
        alignment_gain(before, after[:-1])
