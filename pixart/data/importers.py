"""Import real captioned images into the dataset format, skipping bad entries with a report.

Sources: a folder of images with same-named ``.txt`` raw captions and optional ``.dense.txt`` dense
captions, or a JSONL file of ``{"path", "caption"[, "dense_caption"]}`` lines. Images are copied to ``images/<sha256>.<ext>``,
so re-importing the same image is a no-op and an import appends to an existing dataset without
touching what is there. Bad entries (missing or unreadable image, empty caption, aspect ratio
beyond 4.5 — the official loader's limit) are skipped and counted per reason in
``import_report.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pixart import atomic
from pixart.data.format import DATA_INFO, IMAGES, Entry, load_dataset, write_data_info

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DENSE_SUFFIX = ".dense.txt"
MAX_RATIO = 4.5
REPORT = "import_report.json"


@dataclass(frozen=True)
class Candidate:
    """One source entry before checks: where it came from, its image and captions."""

    source: str
    image: Path | None
    caption: str
    dense: str = ""


def _stem_and_kind(path: Path) -> tuple[Path, str]:
    """(the image stem a file belongs to, "image" | "raw" | "dense"): ``x.dense.txt`` is the dense
    caption of ``x.<ext>``, never the raw caption of an image called ``x.dense``."""
    name = path.name
    if name.lower().endswith(DENSE_SUFFIX) and len(name) > len(DENSE_SUFFIX):
        return path.with_name(name[: -len(DENSE_SUFFIX)]), "dense"
    return path.with_suffix(""), "raw" if path.suffix.lower() == ".txt" else "image"


def _read_caption(path: Path | None) -> str:
    return path.read_text(errors="replace").strip() if path is not None else ""


def folder_candidates(src: Path) -> Iterator[Candidate]:
    """Images in ``src`` (recursively) with a same-named .txt raw caption and optional .dense.txt
    dense caption (``cat.png``, ``cat.txt``, ``cat.dense.txt``); captions without an image too."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    stems: dict[Path, dict[str, list[Path]]] = {}
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES + (".txt",):
            stem, kind = _stem_and_kind(path)
            stems.setdefault(stem, {}).setdefault(kind, []).append(path)
    for _, files in sorted(stems.items()):
        image = (files.get("image") or [None])[0]
        raw, dense = (files.get("raw") or [None])[0], (files.get("dense") or [None])[0]
        yield Candidate(str(image or raw or dense), image, _read_caption(raw), _read_caption(dense))


def jsonl_candidates(jsonl: Path) -> Iterator[Candidate]:
    """Lines of ``{"path", "caption"[, "dense_caption"]}``; relative paths are from the file's folder."""
    jsonl = Path(jsonl)
    for n, line in enumerate(jsonl.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{jsonl}:{n}"
        try:
            row = json.loads(line)
            path = Path(row["path"])
            yield Candidate(source, path if path.is_absolute() else jsonl.parent / path,
                            str(row.get("caption") or "").strip(), str(row.get("dense_caption") or "").strip())
        except (json.JSONDecodeError, KeyError, TypeError):
            yield Candidate(source, None, "", "")


def check(candidate: Candidate) -> tuple[str | None, tuple[int, int] | None]:
    """(reason to skip or None, (height, width)): the image exists and decodes, the raw caption is
    not empty, the aspect ratio is within MAX_RATIO."""
    if candidate.image is None or not candidate.image.is_file():
        return "missing_image", None
    try:
        with Image.open(candidate.image) as img:
            img.load()
            height, width = img.height, img.width
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return "unreadable_image", None
    if not candidate.caption:
        return "empty_caption", None
    if max(height / width, width / height) > MAX_RATIO:
        return "aspect_ratio", None
    return None, (height, width)


def stored_path(image: Path) -> str:
    """Where an image lives inside a dataset: ``images/<sha256 of its bytes>.<ext>``."""
    return f"{IMAGES}/{hashlib.sha256(Path(image).read_bytes()).hexdigest()[:32]}{Path(image).suffix.lower()}"


def import_candidates(candidates: Iterable[Candidate], out_dir: Path, *, quality: str = "high") -> dict:
    """Append the good candidates to the dataset in ``out_dir`` (created if absent); return the report.

    The report (also written to ``out_dir/import_report.json``) has ``imported``,
    ``already_present``, ``skipped`` (count per reason) and ``bad`` (source and reason of each).
    """
    if quality not in ("high", "low"):
        raise ValueError(f"quality: '{quality}' is not 'high' or 'low'")
    out_dir = Path(out_dir)
    entries = load_dataset(out_dir) if (out_dir / DATA_INFO).exists() else []
    present = {e.path for e in entries}
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    skipped: Counter[str] = Counter()
    bad, imported, already = [], 0, 0
    for cand in candidates:
        reason, size = check(cand)
        if reason is not None:
            skipped[reason] += 1
            bad.append({"source": cand.source, "reason": reason})
            continue
        rel = stored_path(cand.image)
        if rel in present:
            already += 1
            continue
        target = out_dir / rel
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(cand.image, tmp)
        tmp.replace(target)
        height, width = size
        entries.append(Entry(path=rel, prompt=cand.caption, sharegpt4v=cand.dense, height=height, width=width,
                             ratio=height / width, quality=quality))
        present.add(rel)
        imported += 1
    write_data_info(out_dir, entries)
    report = {"imported": imported, "already_present": already, "total": len(entries),
              "skipped": dict(sorted(skipped.items())), "bad": bad}
    atomic.write_json(out_dir / REPORT, report)
    return report


def import_folder(src: Path, out_dir: Path, *, quality: str = "high") -> dict:
    """Import a folder of images with same-named .txt (and .dense.txt) captions; see ``import_candidates``."""
    return import_candidates(folder_candidates(src), out_dir, quality=quality)


def import_jsonl(jsonl: Path, out_dir: Path, *, quality: str = "high") -> dict:
    """Import a JSONL file of path / caption [/ dense_caption]; see ``import_candidates``."""
    if not Path(jsonl).is_file():
        raise FileNotFoundError(f"{jsonl}: no such JSONL file")
    return import_candidates(jsonl_candidates(jsonl), out_dir, quality=quality)
