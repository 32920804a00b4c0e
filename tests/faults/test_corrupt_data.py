"""Corrupt input at feature time (the disk changed after prepare-data checked it): a truncated PNG, a
truncated latent shard, a data_info.json entry outside the dataset folder. Each is refused by name
before anything is overwritten; nothing is skipped."""

from __future__ import annotations

import json

import pytest

from pixart.data.features import FeatureCache
from pixart.data.format import DATA_INFO, DatasetError, load_dataset
from tests.faults import harness


@pytest.fixture
def dataset(tmp_path):
    return harness.feature_dataset(tmp_path)


def test_a_truncated_png_at_feature_time_is_refused_by_name(tmp_path, dataset, record):
    out = harness.build_features(tmp_path, tmp_path / "features/set", caption="raw")
    image = dataset / load_dataset(dataset)[7].path
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    before = harness.snapshot(out)

    with pytest.raises(DatasetError, match="cannot be read as an image") as failed:
        harness.build_features(tmp_path, out, caption="dense")
    assert str(failed.value).startswith(f"{image}:")
    after = harness.snapshot(out)
    assert after == before
    record("truncated PNG at feature time", "refused, image named", before, after)


def test_a_truncated_latent_shard_is_refused_by_name_by_the_build_and_the_reader(tmp_path, dataset, record):
    out = harness.build_features(tmp_path, tmp_path / "features/set")
    shard = out / FeatureCache(out).shards[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    before = harness.snapshot(out)

    with pytest.raises(DatasetError, match="feature shard does not open") as failed:
        harness.build_features(tmp_path, out)  # same key: it would have been "up to date"
    assert str(failed.value).startswith(f"{shard}:")
    cache = FeatureCache(out)
    row_of_shard_1 = next(i for i, item in enumerate(cache.items) if item["shard"] == 1)
    with pytest.raises(DatasetError, match=str(shard)):
        cache[row_of_shard_1]
    after = harness.snapshot(out)
    assert after == before
    record("truncated latent shard", "refused by build and reader, shard named", before, after)


@pytest.mark.parametrize("outside", ["../elsewhere/image.png", "/etc/hostname"])
def test_a_data_info_path_outside_the_dataset_is_refused_at_feature_time(tmp_path, dataset, record, outside):
    info = dataset / DATA_INFO
    entries = json.loads(info.read_text())
    entries[3]["path"] = outside
    info.write_text(json.dumps(entries))
    before = harness.snapshot(dataset)

    with pytest.raises(DatasetError, match=f"entry 3: path '{outside}' is outside the dataset folder") as failed:
        harness.build_features(tmp_path, tmp_path / "features/set")
    assert str(failed.value).startswith(f"{info}:")
    assert not (tmp_path / "features").exists()  # refused before anything was read or written
    after = harness.snapshot(dataset)
    assert after == before
    record(f"data_info path outside the dataset ({outside})", "refused, entry named", before, after)
