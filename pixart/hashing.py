"""Content hashes of folders of pretrained weights, exact and paid once per file version.

The feature cache is keyed by the VAE and text encoder that made it. Hashing the loaded modules
reads every byte of T5-XXL (~19 GB) on every features run; instead, as DVC's state db does, each
file's sha256 is memoised with its (size, mtime_ns, inode) and recomputed only when one of them
changes, so a second run only stats the files.

The memo lives under ``<cache_dir>/hashes/`` (default ``.cache/hashes/``), keyed by the folder's
resolved path, never inside the folder: the component folders (``outputs/vae-*``,
``outputs/text-encoder``) are DVC outputs of earlier stages, and a file written into one afterwards
would make ``dvc status`` report it changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pixart import atomic

_CHUNK = 1 << 24


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read in 16 MiB chunks (weights and checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` (symlinks followed: a hub snapshot links its blobs), sorted.
    Dot-files and dot-folders are skipped: no loader reads them, and a hub download keeps changing
    metadata in ``.cache/``."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root, n).relative_to(folder).as_posix() for n in names if not n.startswith("."))
    return sorted(found)


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _memo_file(folder: Path, memo_dir: Path) -> Path:
    return memo_dir / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:32]}.json"


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())["files"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def folder_hash(path: str | Path, *, memo_dir: str | Path | None = None) -> str:
    """sha256 over the relative path and content sha256 of every file in ``path``: equal for equal
    contents wherever the folder lies; a file's content is read only when its (size, mtime_ns,
    inode) differ from the memo in ``memo_dir`` (default: the settings' cache_dir / hashes)."""
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder_hash: {folder} is not a folder")
    if memo_dir is None:
        from pixart.settings import get_settings

        settings = get_settings()
        memo_dir = settings.path(settings.cache_dir) / "hashes"
    memo_path = _memo_file(folder, Path(memo_dir))
    memo = _read_memo(memo_path)
    files: dict[str, dict[str, Any]] = {}
    for rel in _files(folder):
        stamp, known = _stamp(folder / rel), memo.get(rel)
        fresh = known is not None and known["stamp"] == stamp
        files[rel] = known if fresh else {"stamp": stamp, "sha256": file_sha256(folder / rel)}
    if files != memo:
        atomic.write_json(memo_path, {"folder": str(folder), "files": files})
    lines = "".join(f"{rel}\0{entry['sha256']}\n" for rel, entry in files.items())
    return hashlib.sha256(lines.encode()).hexdigest()
