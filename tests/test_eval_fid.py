"""FID: our Fréchet distance against scipy's, and its behaviour over real EfficientNet-lite0 features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from pixart.eval.backbones import EfficientNetLite0, FeatureBackbone, InceptionV3, build_backbone
from pixart.eval.fid import (
    compute_statistics,
    extract_features,
    fid,
    fid_from_images,
    frechet_distance,
    frechet_distance_to,
    image_statistics,
)
from pixart.eval.inception import FIDInceptionV3


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """Float NCHW images in [0, 1]: low-frequency colour blobs, varied enough for a covariance."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    torch.set_num_threads(2)
    return EfficientNetLite0()


def test_frechet_distance_matches_scipy_sqrtm_on_full_rank_covariances() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.5
    sa, sb = compute_statistics(a), compute_statistics(b)
    covmean = scipy.linalg.sqrtm(sa.sigma @ sb.sigma).real
    expected = np.sum((sa.mu - sb.mu) ** 2) + np.trace(sa.sigma + sb.sigma - 2 * covmean)
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)


def test_the_gram_form_equals_the_full_distance_when_images_are_fewer_than_features() -> None:
    rng = np.random.default_rng(1)
    reference = compute_statistics(rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)))
    few = rng.normal(size=(20, 64)) @ rng.normal(size=(64, 64)) + 0.3
    assert frechet_distance_to(few, reference) == pytest.approx(
        frechet_distance(compute_statistics(few), reference), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"expected \(N >= 2, 64\)"):
        frechet_distance_to(few[:, :10], reference)


def test_efficientnet_lite0_loads_packaged_weights_without_torchvision(backbone: EfficientNetLite0) -> None:
    import sys

    assert isinstance(backbone, FeatureBackbone)
    assert "torchvision" not in sys.modules
    feats = backbone.features(
        (_smooth_images(2, 0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    )
    assert feats.shape == (2, 1280)
    # Pooled post-activation (ReLU6) features from trained weights: non-negative, not all equal.
    assert feats.min() >= 0 and feats.std() > 0


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_brightness_shift(
    backbone: EfficientNetLite0,
) -> None:
    images = _smooth_images(12, seed=1)
    base = extract_features(images, backbone, batch_size=12)
    scale = float(compute_statistics(base).sigma.trace())
    assert fid(base, base) < 1e-3 * scale

    distances = [fid(base, extract_features((images + s).clamp(0, 1), backbone)) for s in (0.1, 0.25, 0.5)]
    assert distances[0] > 1e-3 * scale
    assert distances[0] < distances[1] < distances[2], distances


def test_fid_is_symmetric(backbone: EfficientNetLite0) -> None:
    a, b = _smooth_images(12, seed=2), F.avg_pool2d(_smooth_images(12, seed=3), 5, stride=1, padding=2)
    ab = fid_from_images(a, b, backbone, batch_size=8)
    assert ab == pytest.approx(fid_from_images(b, a, backbone, batch_size=12), rel=1e-6)
    # blurred blobs against sharp ones measured 163, two samples of sharp blobs 24: a distance that
    # did not see the blur would sit at the sampling noise
    assert ab > 3 * fid_from_images(a, _smooth_images(12, seed=4), backbone), ab
    # PixEval compares every stage to one reference's statistics, computed once
    reference = image_statistics(b, backbone)
    assert frechet_distance(image_statistics(a, backbone), reference) == pytest.approx(ab, rel=1e-6)


def test_inception_v3_loads_a_local_weights_file_and_gives_2048_features(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "inception.safetensors"
    save_file(FIDInceptionV3().state_dict(), path)
    backbone = build_backbone("inception-v3", weights=path)
    assert isinstance(backbone, InceptionV3)
    assert backbone.features(_smooth_images(2, 0)).shape == (2, 2048)


def test_inception_v3_missing_weights_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "pt_inception-2015-12-05.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        InceptionV3(missing)


def test_bad_image_batches_are_refused_with_the_reason() -> None:
    from pixart.eval.images import as_float_nchw

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_float_nchw(torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="NHWC"):
        as_float_nchw(np.zeros((1, 3, 8, 8), dtype=np.uint8))
