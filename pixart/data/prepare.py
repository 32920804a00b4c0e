"""prepare-data's one job: the configured data source as two datasets, data/train and data/heldout.

``generated`` renders the scene dataset (pixart.data.generate). ``folder`` and ``jsonl`` read the
user's images through pixart.data.importers — a folder of images with ``.txt`` raw and optional
``.dense.txt`` dense captions, a JSONL file — or a folder that already holds ``data_info.json``
(pixart.data.format), and check every entry:

- a missing image, one that does not decode, an empty raw caption or an aspect ratio beyond the
  official loader's limit is skipped and counted; so is a second copy of an image already taken;
- a data_info.json entry whose ``path`` is absolute or leaves the dataset folder with ``..`` is
  refused: prepare-data fails naming the file and the entry. Such a file describes something else
  than the dataset it sits in (a copy from another machine, a hostile file), which no skip count
  would make visible. Symbolic links inside the folder are followed;
- an entry without a dense caption fails prepare-data naming it and ``data.missing_dense``, before
  any image is decoded (``missing_dense: error``), or takes its raw caption as the dense one
  (``raw``; counted as ``dense_from_raw``).

The held-out set is the user's own (``data.heldout_path``, the same kind of source as ``data.path``;
an image found in both is dropped from training and counted as ``in_heldout``), or the
``data.n_heldout`` usable entries of ``data.path`` with the smallest sha256(split_seed, image hash):
a split that depends on the seed and the images only, not on file order or library versions.

Each split is written whole in a temp folder and renamed into place (pixart.atomic): a crash leaves
the old split or the new one, never half of one. Images are copied to ``images/<sha256>.<ext>`` and
source names in the reports are relative to the project root, so the same input gives
byte-identical outputs wherever the project is checked out. ``import_report.json`` in each split
says where it came from, how many entries it holds, and what was skipped: counts per reason and
each bad entry. When the held-out set is split from ``data.path``, the skips of that source are
reported in train's report.
"""

from __future__ import annotations

import hashlib
import posixpath
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pixart import atomic
from pixart.config import DataConfig
from pixart.data.format import DATA_INFO, IMAGES, DatasetError, Entry, load_dataset, write_data_info
from pixart.data.generate import generate_dataset
from pixart.data.importers import (
    DENSE_SUFFIX,
    REPORT,
    Candidate,
    check,
    folder_candidates,
    jsonl_candidates,
    stored_path,
)

SPLITS = ("train", "heldout")
MIN_HELDOUT = 2  # PixEval's FID needs two images


class PrepareError(ValueError):
    """The data cannot be prepared as configured; the message names the entry and the params field."""


@dataclass(frozen=True)
class _Item:
    """A usable entry: where it came from, its source image and its entry in the prepared dataset."""

    source: str
    image: Path
    entry: Entry
    dense_from_raw: bool

    @property
    def digest(self) -> str:
        return Path(self.entry.path).stem


@dataclass
class _Scan:
    """What one source gave: its usable items and what was skipped."""

    items: list[_Item]
    skipped: Counter
    bad: list[dict]


def prepare(data: DataConfig, train_dir: Path, heldout_dir: Path, *, root: Path) -> dict[str, dict]:
    """Write ``train_dir`` and ``heldout_dir`` from ``data`` (relative paths resolve against ``root``);
    return each split's report. Raises PrepareError or DatasetError, before writing anything, when
    the data cannot be used as configured."""
    root = Path(root)
    if data.source == "generated":
        gen, reports = data.generator, {}
        for split, n, out in zip(SPLITS, (gen.n_images, gen.n_heldout), (train_dir, heldout_dir), strict=True):
            generate_dataset(out, n=n, seed=gen.seed, resolution_px=gen.resolution_px, spec=gen, split=split)
            reports[split] = {"split": split, "source": "generated", "entries": n,
                              "path": f"the scene generator (seed {gen.seed})"}
        return reports
    for field, source in (("data.path", data.path), ("data.heldout_path", data.heldout_path)):
        if source is not None and any(_inside(root / source, out) for out in (train_dir, heldout_dir)):
            raise PrepareError(f"{field}: {source} is inside prepare-data's own output ({train_dir}, {heldout_dir}), "
                               "which it replaces; keep your data elsewhere (e.g. data/mine)")
    train = _scan(data, root / data.path, "data.path", root)
    if data.heldout_path is None:
        held, train_items, held_items = None, *_split(train.items, data.n_heldout, data.split_seed, data.path)
        selection = {"split_seed": data.split_seed, "n_heldout": data.n_heldout, "from": _shown(root / data.path, root)}
    else:
        held = _scan(data, root / data.heldout_path, "data.heldout_path", root)
        held_items, taken = held.items, {it.digest for it in held.items}
        train_items = [it for it in train.items if it.digest not in taken]
        for it in train.items:
            if it.digest in taken:
                train.skipped["in_heldout"] += 1
                train.bad.append({"source": it.source, "reason": "in_heldout"})
        selection = {"heldout_path": _shown(root / data.heldout_path, root)}
    if not train_items:
        raise PrepareError(f"data.path: {data.path} has no usable training entries (skipped: {dict(train.skipped)})")
    if len(held_items) < MIN_HELDOUT:
        raise PrepareError(f"data.heldout_path: {data.heldout_path} has {len(held_items)} usable entries; "
                           f"PixEval's FID needs at least {MIN_HELDOUT}")
    reports = {
        "train": _report("train", data, data.path, root, train_items, train, selection),
        "heldout": _report("heldout", data, data.heldout_path or data.path, root, held_items, held, selection),
    }
    for (split, items), out in zip((("train", train_items), ("heldout", held_items)), (train_dir, heldout_dir),
                                   strict=True):
        _write(out, items, reports[split])
    return reports


def summary(report: dict, out_dir: Path) -> str:
    """One line for a split written to ``out_dir``: size, origin, skips."""
    line = f"prepare-data: {report['split']}: {report['entries']} entries from {report['path']}"
    if report.get("skipped"):
        line += f", skipped {sum(report['skipped'].values())} (" + ", ".join(
            f"{reason} {n}" for reason, n in report["skipped"].items()) + ")"
    if report.get("dense_from_raw"):
        line += f", {report['dense_from_raw']} dense captions from raw"
    return line + f" -> {out_dir}" + (f" (report: {Path(out_dir) / REPORT})" if report["source"] != "generated" else "")


def _shown(path: Path | str, root: Path) -> str:
    """A path or source name as reports show it: relative to the project root when inside it."""
    text, prefix = str(path), str(root).rstrip("/") + "/"
    return text.removeprefix(prefix)


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _candidates(source: str, path: Path, field: str) -> list[tuple[Candidate, dict]]:
    """The source's candidates, each with the entry fields it brings besides its captions."""
    if source == "jsonl":
        if not path.is_file():
            raise PrepareError(f"{field}: {path}: no such JSONL file (data.source is 'jsonl')")
        return [(c, {}) for c in jsonl_candidates(path)]
    if not path.is_dir():
        raise PrepareError(f"{field}: {path}: not a folder (data.source is 'folder')")
    if (path / DATA_INFO).is_file():
        return _data_info_candidates(path)
    return [(c, {}) for c in folder_candidates(path)]


def _data_info_candidates(dataset_dir: Path) -> list[tuple[Candidate, dict]]:
    """A formatted dataset's entries as candidates; an entry pointing outside the folder is refused."""
    info, out = dataset_dir / DATA_INFO, []
    for i, e in enumerate(load_dataset(dataset_dir)):
        norm = posixpath.normpath(e.path)
        if posixpath.isabs(e.path) or norm == ".." or norm.startswith("../"):
            raise DatasetError(f"{info}: entry {i}: path '{e.path}' is outside the dataset folder {dataset_dir} "
                               "(absolute or '..'); paths must be relative to the folder that holds data_info.json")
        out.append((Candidate(f"{info}: entry {i} ({e.path})", dataset_dir / e.path, e.prompt.strip(),
                              e.sharegpt4v.strip()), {"quality": e.quality, "scene": e.scene}))
    return out


def _scan(data: DataConfig, path: Path, field: str, root: Path) -> _Scan:
    pairs = _candidates(data.source, path, field)
    if data.missing_dense == "error":
        lacking = [_shown(c.source, root) for c, _ in pairs
                   if not c.dense and c.caption and c.image is not None and c.image.is_file()]
        if lacking:
            raise PrepareError(
                f"{field}: {len(lacking)} entries have no dense caption, first {lacking[0]}"
                + (f" (also {', '.join(lacking[1:4])}{', ...' if len(lacking) > 4 else ''})" if len(lacking) > 1 else "")
                + f": give each one (a {DENSE_SUFFIX} file, 'dense_caption' in JSONL, 'sharegpt4v' in data_info.json) "
                "or set data.missing_dense: raw to use the raw caption as the dense one"
            )
    scan, seen = _Scan([], Counter(), []), set()
    for cand, extra in tqdm(pairs, desc=f"prepare {_shown(path, root)}", unit="img", leave=False):
        reason, size = check(cand)
        stored = stored_path(cand.image) if reason is None else None
        if stored is not None and Path(stored).stem in seen:
            reason = "duplicate_image"
        if reason is not None:
            scan.skipped[reason] += 1
            scan.bad.append({"source": _shown(cand.source, root), "reason": reason})
            continue
        seen.add(Path(stored).stem)
        height, width = size
        entry = Entry(path=stored, prompt=cand.caption, sharegpt4v=cand.dense or cand.caption, height=height,
                      width=width, ratio=height / width, **extra)
        scan.items.append(_Item(_shown(cand.source, root), cand.image, entry, dense_from_raw=not cand.dense))
    return scan


def _split(items: list[_Item], n_heldout: int, seed: int, path: Path) -> tuple[list[_Item], list[_Item]]:
    """(train, heldout): the ``n_heldout`` items with the smallest sha256(seed, image hash) are held
    out; both keep the source's order."""
    if n_heldout >= len(items):
        raise PrepareError(f"data.n_heldout: {n_heldout} held-out entries, but {path} has only {len(items)} usable "
                           "ones and training needs the rest; lower data.n_heldout or give data.heldout_path")
    order = sorted(range(len(items)), key=lambda i: hashlib.sha256(f"{seed}:{items[i].digest}".encode()).digest())
    held = set(order[:n_heldout])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def _report(split: str, data: DataConfig, path: Path, root: Path, items: list[_Item], scan: _Scan | None,
            selection: dict) -> dict:
    """A split's import report; ``scan`` is None for a held-out set split from the training source."""
    return {"split": split, "source": data.source, "path": _shown(root / path, root), "entries": len(items),
            "heldout": selection, "missing_dense": data.missing_dense,
            "dense_from_raw": sum(it.dense_from_raw for it in items),
            "skipped": dict(sorted(scan.skipped.items())) if scan else {}, "bad": scan.bad if scan else []}


def _write(out_dir: Path, items: list[_Item], report: dict) -> None:
    """The split as a dataset folder with its report, replacing ``out_dir`` in one rename."""
    with atomic.folder(Path(out_dir)) as tmp:
        tmp.chmod(0o755)
        (tmp / IMAGES).mkdir()
        for item in items:
            shutil.copyfile(item.image, tmp / item.entry.path)
        write_data_info(tmp, [item.entry for item in items])
        atomic.write_json(tmp / REPORT, report)
