"""The generated dataset: deterministic, truthful captions, real detail at every resolution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixart.data.format import DatasetError, dataset_version, load_dataset
from pixart.data.generate import generate_dataset, image_size
from pixart.data.scenes import POSITIONS, Scene, SceneObject, SceneSpec, dense_caption, render_scene


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    generate_dataset(tmp_path / "a", n=12, seed=3, resolution_px=48)
    generate_dataset(tmp_path / "b", n=12, seed=3, resolution_px=48)
    generate_dataset(tmp_path / "c", n=12, seed=4, resolution_px=48)
    assert dataset_version(tmp_path / "a") == dataset_version(tmp_path / "b")
    assert dataset_version(tmp_path / "a") != dataset_version(tmp_path / "c")


def test_entries_follow_the_spec_and_images_match_their_size(tmp_path):
    spec = SceneSpec(max_objects=3, square_fraction=0.5, low_quality_fraction=0.3)
    entries = generate_dataset(tmp_path / "d", n=60, seed=0, resolution_px=40, spec=spec)
    from PIL import Image

    assert entries == load_dataset(tmp_path / "d")
    ratios = [e.ratio for e in entries]
    assert 0.25 <= min(ratios) < 1 < max(ratios) <= 4.0 and ratios.count(1.0) >= 15
    assert 5 <= sum(e.quality == "low" for e in entries) <= 35
    for e in entries:
        with Image.open(tmp_path / "d" / e.path) as im:
            assert im.size == (e.width, e.height)
        assert min(e.height, e.width) == 40
        objs = e.scene.objects
        assert 1 <= len(objs) <= 3 and len({o.position for o in objs}) == len(objs)
        for o in objs:  # the dense caption names every attribute of every object, the raw one is shorter
            assert f"{o.size} {o.color} {o.shape}" in e.sharegpt4v
        assert e.scene.background in e.sharegpt4v
        assert len(e.prompt.split()) < len(e.sharegpt4v.split())


def test_raw_captions_are_sometimes_wrong_about_colour(tmp_path):
    spec = SceneSpec(max_objects=1, raw_wrong_prob=0.5, raw_omit_prob=0.0)
    entries = generate_dataset(tmp_path / "w", n=80, seed=1, resolution_px=16, spec=spec)
    wrong = sum(e.scene.objects[0].color not in e.prompt for e in entries)
    assert 20 <= wrong <= 60


def test_fine_detail_appears_only_at_high_resolution():
    spec = SceneSpec()
    scene = Scene(background="white",
                  objects=(SceneObject(shape="square", color="blue", size="large", position="center"),))
    # The stripe texture inside the object: high pixel variance at 512 px, averaged away at 24 px.
    def centre_std(side: int) -> float:
        img, c, k = np.asarray(render_scene(scene, side, side, spec), dtype=np.float32), side // 2, side // 12
        return float(img[c - k:c + k, c - k:c + k].std(axis=(0, 1)).max())

    assert centre_std(512) > 3 * centre_std(48) and centre_std(512) > 3 * centre_std(24)


def test_objects_land_in_their_grid_cell():
    spec = SceneSpec()
    for pos in POSITIONS:
        obj = SceneObject(shape="circle", color="red", size="large", position=pos)
        img = np.asarray(render_scene(Scene(background="black", objects=(obj,)), 90, 90, spec))
        row, col = divmod(POSITIONS.index(pos), 3)
        cell = img[row * 30:(row + 1) * 30, col * 30:(col + 1) * 30]
        assert (cell[..., 0] > 150).mean() > 0.3
        assert (img[..., 0] > 150).sum() == (cell[..., 0] > 150).sum()


def test_dense_caption_counts_objects():
    scene = Scene(background="gray", objects=(SceneObject(shape="circle", color="red", size="small", position="top"),
                                              SceneObject(shape="square", color="blue", size="large", position="left")))
    assert dense_caption(scene).startswith("An image with two objects on a plain gray background")


def test_spec_rejects_unknown_shape():
    with pytest.raises(ValueError, match="shapes"):
        SceneSpec(shapes=("circle", "blob"))


def test_image_size_keeps_short_side():
    assert image_size(4.0, 32) == (128, 32) and image_size(0.25, 32) == (32, 128) and image_size(1.0, 7) == (7, 7)


def test_bad_data_info_names_file_and_entry(tmp_path):
    generate_dataset(tmp_path / "e", n=3, seed=0, resolution_px=16)
    info = tmp_path / "e" / "data_info.json"
    data = json.loads(info.read_text())
    del data[2]["height"]
    info.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"data_info.json: entry 2: height"):
        load_dataset(tmp_path / "e")
    info.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "e")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing")


def test_size_fraction_sets_how_much_of_its_cell_an_object_covers():
    scene = Scene(background="white",
                  objects=(SceneObject(shape="square", color="blue", size="large", position="center"),))

    def covered(spec: SceneSpec) -> float:
        img = np.asarray(render_scene(scene, 96, 96, spec), dtype=np.float32)
        return float((np.abs(img - 245).sum(axis=-1) > 60).mean())

    default, big = covered(SceneSpec()), covered(SceneSpec(size_fraction={"small": 0.6, "large": 1.0}))
    # a square spans size_fraction / sqrt(2) of the cell's side, and the cell a third of the image's
    assert default == pytest.approx((0.85 / 2**0.5 / 3) ** 2, rel=0.15)
    assert big == pytest.approx((1.0 / 2**0.5 / 3) ** 2, rel=0.15)
    with pytest.raises(ValueError, match="size_fraction"):
        SceneSpec(size_fraction={"small": 0.6})
    with pytest.raises(ValueError, match="size_fraction"):
        SceneSpec(size_fraction={"small": 0.6, "large": 1.5})
