"""prepare-data for a user's own data: a folder of images with .txt captions, a JSONL file or a
data_info.json dataset becomes data/train and data/heldout, checked, split, reported, byte-stable."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, subprocess_env
from PIL import Image, ImageDraw

from pixart.config import PARAMS_FILE, DataConfig, ParamsError, load_profile
from pixart.data import prepare as prepare_module
from pixart.data.format import DatasetError, Entry, load_dataset, write_data_info
from pixart.data.importers import REPORT, folder_candidates
from pixart.data.prepare import PrepareError, prepare
from pixart.paths import CurriculumPaths
from pixart.settings import Settings


def _image(path: Path, i: int, size: tuple[int, int] = (28, 24)) -> None:
    """A small photo-like PNG, different for every ``i``: a gradient sky, a sun and a ground."""
    img = Image.new("RGB", size, (40 + 7 * i % 200, 90, 160))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, size[1] * 2 // 3, size[0], size[1]), fill=(60, 120 + 3 * i % 100, 40))
    draw.ellipse((2 + i % 9, 2, 10 + i % 9, 10), fill=(250, 220 - 5 * i % 120, 50))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _folder(src: Path, n: int, *, dense: bool = True, first: int = 0) -> Path:
    """``n`` images ``imgNN.png`` with ``imgNN.txt`` raw and (``dense``) ``imgNN.dense.txt`` captions."""
    for i in range(first, first + n):
        _image(src / f"img{i:02d}.png", i)
        (src / f"img{i:02d}.txt").write_text(f"a field {i}\n")
        if dense:
            (src / f"img{i:02d}.dense.txt").write_text(f"A green field under a blue sky, sun number {i}.\n")
    return src


def _project(tmp_path: Path, data: dict) -> Path:
    """A project root whose params.yaml has a profile 'mine' = tiny with ``data`` replaced (and no scene
    reader: it reads generated scenes only), and a
    copy of the code, so that ``python -m stages.prepare_data`` there reads that params.yaml."""
    root = tmp_path / "project"
    for package in ("pixart", "stages"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["profiles"]["mine"] = {"extends": "tiny", "data": {"generator": None, **data}, "recaption": None}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def _stage(root: Path) -> subprocess.CompletedProcess:
    """prepare-data as dvc.yaml runs it, in ``root``."""
    env = {**subprocess_env(), "PIXART_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", "stages.prepare_data", "--profile", "mine"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _prepare(tmp_path: Path, **data) -> dict:
    return prepare(DataConfig(**data), tmp_path / "data/train", tmp_path / "data/heldout", root=tmp_path)


def test_stage_prepares_a_folder_of_images_into_both_splits_with_reports_byte_identically(tmp_path):
    root = _project(tmp_path, {"source": "folder", "path": "mydata", "n_heldout": 6})
    _folder(root / "mydata", 24)
    proc = _stage(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train, heldout = load_dataset(root / "data/train"), load_dataset(root / "data/heldout")
    assert (len(train), len(heldout)) == (18, 6)
    assert not {e.path for e in train} & {e.path for e in heldout}
    assert sorted(e.prompt for e in train + heldout) == sorted(f"a field {i}" for i in range(24))
    assert all(e.sharegpt4v.startswith("A green field") and e.sharegpt4v.endswith(f"sun number {e.prompt[8:]}.")
               for e in train + heldout)
    for split, n in (("train", 18), ("heldout", 6)):
        report = json.loads((root / "data" / split / REPORT).read_text())
        assert report["entries"] == n and report["path"] == "mydata" and report["skipped"] == {}
        assert f"prepare-data: {split}: {n} entries from mydata" in proc.stdout
    for e in train:
        with Image.open(root / "data/train" / e.path) as im:
            assert (im.height, im.width, e.ratio) == (e.height, e.width, e.height / e.width)

    before = {split: _hashes(root / "data" / split) for split in ("train", "heldout")}
    again = _stage(root)
    assert again.returncode == 0, again.stderr
    assert {split: _hashes(root / "data" / split) for split in ("train", "heldout")} == before
    assert sorted(p.name for p in (root / "data").iterdir()) == ["heldout", "train"]  # no temp folder left


def test_the_split_depends_on_split_seed_and_the_images_not_on_file_order(tmp_path):
    _folder(tmp_path / "a", 20)
    held = {s: {e.prompt for e in (_prepare(tmp_path, source="folder", path="a", n_heldout=5, split_seed=s),
                                   load_dataset(tmp_path / "data/heldout"))[1]} for s in (0, 1)}
    assert held[0] != held[1] and len(held[0]) == len(held[1]) == 5
    # the same images under other names, in another order: the same held-out images
    for i in range(20):
        for suffix in (".png", ".txt", ".dense.txt"):
            (tmp_path / "b").mkdir(exist_ok=True)
            shutil.copyfile(tmp_path / "a" / f"img{i:02d}{suffix}", tmp_path / "b" / f"z{19 - i:02d}{suffix}")
    _prepare(tmp_path, source="folder", path="b", n_heldout=5, split_seed=0)
    assert {e.prompt for e in load_dataset(tmp_path / "data/heldout")} == held[0]


def test_a_user_heldout_path_is_used_as_given_and_its_images_leave_training(tmp_path):
    _folder(tmp_path / "train", 12)
    _folder(tmp_path / "held", 5, first=40)
    shutil.copyfile(tmp_path / "held/img41.png", tmp_path / "train/copy.png")
    (tmp_path / "train/copy.txt").write_text("the same picture under another name")
    (tmp_path / "train/copy.dense.txt").write_text("A held-out image hidden in the training folder.")
    reports = _prepare(tmp_path, source="folder", path="train", heldout_path="held")
    assert sorted(e.prompt for e in load_dataset(tmp_path / "data/heldout")) == [f"a field {i}" for i in range(40, 45)]
    assert sorted(e.prompt for e in load_dataset(tmp_path / "data/train")) == sorted(f"a field {i}" for i in range(12))
    assert reports["train"]["skipped"] == {"in_heldout": 1}
    assert reports["train"]["bad"] == [{"source": "train/copy.png", "reason": "in_heldout"}]
    assert reports["heldout"]["heldout"] == {"heldout_path": "held"}
    assert json.loads((tmp_path / "data/heldout" / REPORT).read_text()) == reports["heldout"]


def test_jsonl_source_with_dense_captions_and_a_missing_image(tmp_path):
    lines = []
    for i in range(10):
        _image(tmp_path / "pics" / f"p{i}.png", i)
        lines.append({"path": f"pics/p{i}.png", "caption": f"photo {i}", "dense_caption": f"A detailed photo {i}."})
    lines.append({"path": "pics/gone.png", "caption": "lost", "dense_caption": "A lost photo."})
    (tmp_path / "list.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    reports = _prepare(tmp_path, source="jsonl", path="list.jsonl", n_heldout=3)
    train, heldout = load_dataset(tmp_path / "data/train"), load_dataset(tmp_path / "data/heldout")
    assert (len(train), len(heldout)) == (7, 3)
    assert all(e.sharegpt4v == f"A detailed {e.prompt}." for e in train + heldout)
    assert reports["train"]["skipped"] == {"missing_image": 1}
    assert reports["train"]["bad"] == [{"source": "list.jsonl:11", "reason": "missing_image"}]


def test_missing_dense_caption_fails_naming_the_entry_and_field_before_writing(tmp_path):
    root = _project(tmp_path, {"source": "folder", "path": "mydata", "n_heldout": 4})
    _folder(root / "mydata", 12)
    (root / "mydata/img07.dense.txt").unlink()
    proc = _stage(root)
    assert proc.returncode != 0
    assert "mydata/img07.png" in proc.stderr and "data.missing_dense" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "data").exists()


def test_missing_dense_raw_falls_back_to_the_raw_caption_and_counts_it(tmp_path):
    _folder(tmp_path / "raw-only", 12, dense=False)
    reports = _prepare(tmp_path, source="folder", path="raw-only", n_heldout=4, missing_dense="raw")
    entries = load_dataset(tmp_path / "data/train") + load_dataset(tmp_path / "data/heldout")
    assert all(e.sharegpt4v == e.prompt for e in entries) and len(entries) == 12
    assert (reports["train"]["dense_from_raw"], reports["heldout"]["dense_from_raw"]) == (8, 4)


def _data_info_dataset(folder: Path, n: int, *, bad_path: str | None = None) -> Path:
    entries = []
    for i in range(n):
        _image(folder / "imgs" / f"{i}.png", i)
        entries.append(Entry(path=f"imgs/{i}.png", prompt=f"raw {i}", sharegpt4v=f"dense {i}", height=24, width=28,
                             ratio=24 / 28, quality="low" if i % 2 else "high"))
    if bad_path is not None:
        entries[2] = entries[2].model_copy(update={"path": bad_path})
    write_data_info(folder, entries)
    return folder


@pytest.mark.parametrize("bad_path", ["../outside.png", "imgs/../../outside.png", "/etc/hostname"])
def test_a_data_info_path_outside_the_dataset_folder_is_refused_by_name(tmp_path, bad_path):
    _image(tmp_path / "outside.png", 99)
    _data_info_dataset(tmp_path / "ds", 8, bad_path=bad_path)
    with pytest.raises(DatasetError) as err:
        _prepare(tmp_path, source="folder", path="ds", n_heldout=2)
    assert str(tmp_path / "ds" / "data_info.json") in str(err.value)
    assert "entry 2" in str(err.value) and bad_path in str(err.value)
    assert not (tmp_path / "data").exists()


def test_a_corrupt_image_is_skipped_and_counted_in_a_folder_and_in_a_data_info_dataset(tmp_path):
    _folder(tmp_path / "f", 10)
    (tmp_path / "f/img03.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    reports = _prepare(tmp_path, source="folder", path="f", n_heldout=2)
    assert reports["train"]["skipped"] == {"unreadable_image": 1}
    assert reports["train"]["bad"] == [{"source": "f/img03.png", "reason": "unreadable_image"}]
    assert reports["train"]["entries"] + reports["heldout"]["entries"] == 9

    ds = _data_info_dataset(tmp_path / "ds", 10)
    (ds / "imgs/5.png").write_bytes(b"truncated")
    reports = _prepare(tmp_path, source="folder", path="ds", n_heldout=2)
    assert reports["train"]["skipped"] == {"unreadable_image": 1}
    assert reports["train"]["bad"] == [{"source": "ds/data_info.json: entry 5 (imgs/5.png)", "reason": "unreadable_image"}]
    kept = load_dataset(tmp_path / "data/train") + load_dataset(tmp_path / "data/heldout")
    assert sorted(e.prompt for e in kept) == sorted(f"raw {i}" for i in range(10) if i != 5)
    assert all(e.quality == ("low" if int(e.prompt[4:]) % 2 else "high") for e in kept)  # fields kept


def test_n_heldout_must_leave_training_entries(tmp_path):
    _folder(tmp_path / "small", 5)
    with pytest.raises(PrepareError, match=r"data\.n_heldout: 5 held-out entries, but .* only 5 usable"):
        _prepare(tmp_path, source="folder", path="small", n_heldout=5)


def test_a_crash_while_writing_leaves_the_previous_split_whole(tmp_path, monkeypatch):
    _folder(tmp_path / "f", 10)
    _prepare(tmp_path, source="folder", path="f", n_heldout=2)
    before = _hashes(tmp_path / "data/train")
    calls = []

    def flaky_copy(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise OSError("disk full")
        return shutil.copyfile(src, dst)

    monkeypatch.setattr(prepare_module.shutil, "copyfile", flaky_copy)
    _folder(tmp_path / "f", 4, first=10)
    with pytest.raises(OSError, match="disk full"):
        _prepare(tmp_path, source="folder", path="f", n_heldout=2)
    assert _hashes(tmp_path / "data/train") == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["heldout", "train"]


def test_dense_txt_is_a_dense_caption_never_the_caption_of_an_image_named_x_dense(tmp_path):
    src = tmp_path / "src"
    _image(src / "cat.png", 1)
    (src / "cat.txt").write_text("a cat")
    (src / "cat.dense.txt").write_text("A grey cat asleep on a red sofa.")
    _image(src / "dog.dense.png", 2)  # its raw caption would be dog.dense.txt: a dense caption of 'dog'
    (src / "dog.dense.txt").write_text("A dense caption of an image called dog.")
    found = {Path(c.source).name: (c.image and c.image.name, c.caption, c.dense) for c in folder_candidates(src)}
    assert found == {
        "cat.png": ("cat.png", "a cat", "A grey cat asleep on a red sofa."),
        "dog.dense.png": ("dog.dense.png", "", ""),
        "dog.dense.txt": (None, "", "A dense caption of an image called dog."),
    }


def test_data_config_rejects_contradictions_by_field(tmp_path):
    def load(data: dict):
        raw = yaml.safe_load(PARAMS_FILE.read_text())
        raw["profiles"]["mine"] = {"extends": "tiny", "data": data, "recaption": None}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        return load_profile("mine", tmp_path / "params.yaml")[1].data

    assert load({"source": "jsonl", "path": "x.jsonl", "generator": None}).n_heldout == 64
    for data, message in [
        ({"source": "folder", "generator": None}, "source 'folder' needs 'path'"),
        ({"source": "folder", "path": "x"}, "generator: only for source 'generated'"),
        ({"n_heldout": 8}, "n_heldout: only for source 'folder' or 'jsonl'"),
        ({"source": "folder", "path": "x", "heldout_path": "y", "n_heldout": 8, "generator": None},
         "with 'heldout_path' set there is no split"),
        ({"source": "folder", "path": "x", "missing_dense": "drop", "generator": None}, "profiles.mine.data.missing_dense"),
        ({"source": "folder", "path": "x", "n_heldout": 1, "generator": None}, "profiles.mine.data.n_heldout"),
    ]:
        with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
            load(data)


def test_imported_heldout_gives_sample_prompts_and_pixeval_prompts_without_scenes(tmp_path):
    from pixart.eval.pixeval import load_heldout, reference_images
    from stages.train import sample_prompts

    _folder(tmp_path / "f", 10, dense=False)
    (tmp_path / "f/img00.dense.txt").write_text("A dense caption.")
    _prepare(tmp_path, source="folder", path="f", n_heldout=4, missing_dense="raw")
    paths = CurriculumPaths(Settings(root=tmp_path))
    _, tiny = load_profile("tiny")
    assert paths.train_dataset(tiny) == paths.train_data == tmp_path / "data/train"
    ctx = SimpleNamespace(paths=paths, profile=tiny)
    held = load_dataset(tmp_path / "data/heldout")
    assert sample_prompts(ctx, "raw") == [e.prompt for e in held]
    assert sample_prompts(ctx, "dense") == [e.sharegpt4v for e in held]
    heldout = load_heldout(paths.heldout_data, 100)
    assert heldout.prompts == [e.sharegpt4v for e in held] and heldout.scenes == [None] * 4
    assert reference_images(paths.heldout_data, 16).shape == (4, 3, 16, 16)


def test_generated_source_still_renders_both_splits_without_an_import_report(tmp_path):
    from pixart.config import GeneratorConfig

    gen = GeneratorConfig(n_images=4, n_heldout=2, resolution_px=16)
    reports = prepare(DataConfig(generator=gen), tmp_path / "data/train", tmp_path / "data/heldout", root=tmp_path)
    assert [(r["split"], r["entries"]) for r in reports.values()] == [("train", 4), ("heldout", 2)]
    assert all(e.scene is not None for e in load_dataset(tmp_path / "data/heldout"))
    assert not (tmp_path / "data/train" / REPORT).exists()


def test_a_source_inside_the_outputs_is_refused(tmp_path):
    _folder(tmp_path / "data/train", 6)
    with pytest.raises(PrepareError, match=r"data\.path: data/train is inside prepare-data's own output"):
        _prepare(tmp_path, source="folder", path="data/train", n_heldout=2)
