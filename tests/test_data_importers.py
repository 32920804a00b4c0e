"""Importers: bad entries are skipped and reported, good ones appended, re-imports idempotent."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from pixart.data.format import dataset_version, load_dataset
from pixart.data.importers import import_folder, import_jsonl
from tests.helpers_data import emoji_codepoints, require_emoji_font, write_emoji


def _image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    Image.new("RGB", size, color).save(path)


def _planted_folder(src: Path) -> None:
    src.mkdir()
    for i in range(4):
        _image(src / f"good{i}.png", (40 + i, 30), (60 * i, 20, 200))
        (src / f"good{i}.txt").write_text(f"a blue picture number {i}\n")
    _image(src / "nocap.png", (20, 20), (1, 2, 3))  # no .txt
    _image(src / "blank.png", (20, 21), (1, 2, 3))
    (src / "blank.txt").write_text("   \n")
    (src / "orphan.txt").write_text("a caption without its image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "broken.txt").write_text("a broken file")
    _image(src / "panorama.jpg", (500, 100), (9, 9, 9))  # ratio 5 > 4.5
    (src / "panorama.txt").write_text("a very wide panorama")


def test_folder_import_reports_planted_bad_files_and_keeps_good_ones(tmp_path):
    _planted_folder(tmp_path / "src")
    report = import_folder(tmp_path / "src", tmp_path / "ds")
    assert report["imported"] == 4 and report["total"] == 4
    assert report["skipped"] == {"aspect_ratio": 1, "empty_caption": 2, "missing_image": 1, "unreadable_image": 1}
    assert {Path(b["source"]).name: b["reason"] for b in report["bad"]} == {
        "nocap.png": "empty_caption", "blank.png": "empty_caption", "orphan.txt": "missing_image",
        "broken.png": "unreadable_image", "panorama.jpg": "aspect_ratio",
    }
    assert json.loads((tmp_path / "ds" / "import_report.json").read_text()) == report
    entries = load_dataset(tmp_path / "ds")
    assert sorted(e.prompt for e in entries) == [f"a blue picture number {i}" for i in range(4)]
    for e in entries:
        with Image.open(tmp_path / "ds" / e.path) as im:
            assert (im.height, im.width) == (e.height, e.width) and e.ratio == e.height / e.width


def test_reimport_is_idempotent_and_appending_loses_nothing(tmp_path):
    _planted_folder(tmp_path / "src")
    import_folder(tmp_path / "src", tmp_path / "ds")
    version, before = dataset_version(tmp_path / "ds"), load_dataset(tmp_path / "ds")
    again = import_folder(tmp_path / "src", tmp_path / "ds")
    assert again["imported"] == 0 and again["already_present"] == 4
    assert dataset_version(tmp_path / "ds") == version

    _image(tmp_path / "extra.png", (32, 32), (255, 0, 0))
    lines = [
        {"path": "extra.png", "caption": "a red square", "dense_caption": "A plain red square image."},
        {"path": "missing.png", "caption": "gone"},
        {"caption": "no path at all"},
    ]
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken json\n")
    report = import_jsonl(jsonl, tmp_path / "ds")
    assert report["imported"] == 1 and report["total"] == 5
    assert report["skipped"] == {"missing_image": 3}
    entries = load_dataset(tmp_path / "ds")
    assert entries[-1].prompt == "a red square" and entries[-1].sharegpt4v == "A plain red square image."
    assert entries[:4] == before


def test_import_noto_color_emoji_with_unicode_names(tmp_path):
    require_emoji_font()
    src = tmp_path / "emoji"
    # Single-code-point emoji: symbols (So) and those newer than this Python's Unicode tables (Cn),
    # which have no name: their empty captions are real bad entries the importer must skip.
    codepoints = emoji_codepoints()
    write_emoji(src, codepoints)
    unnamed = sum(not unicodedata.name(chr(cp), "") for cp in codepoints)

    report = import_folder(src, tmp_path / "ds")
    assert len(codepoints) > 1300
    assert report["skipped"] == ({"empty_caption": unnamed} if unnamed else {})
    entries = load_dataset(tmp_path / "ds")
    # identical renders (if any) collapse to one content-addressed image
    assert len(entries) == report["imported"] >= len(codepoints) - unnamed - 10
    assert "grinning face" in {e.prompt for e in entries}
    with Image.open(tmp_path / "ds" / entries[0].path) as im:
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 20  # colour glyphs, not blank boxes
