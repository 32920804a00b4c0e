"""The feature cache: VAE latents and T5 features computed once, read by every training step.

PixArt trains on pre-extracted features (the official ``load_vae_feat`` / ``load_t5_feat``). Here
a cache folder holds safetensors shards — one per encoding batch, all items of a shard the same
size — and ``index.json``. The folder is keyed by a content hash of everything that determines its
bytes (``pixart.data.feature_identity``): the same key is never recomputed, a different one always
is, so the folder is a sound DVC stage output. Latents are stored unscaled as ``latent_dist.mean``
and ``.std``, so the trainer samples a fresh latent per step and applies the VAE's scaling factor.
Text features are stored trimmed to the shard's longest real token count, not padded to
``max_tokens``; the loader pads them back. Shards are independent, so ranks encode disjoint ones and
a killed build keeps what it finished (``build_feature_cache``).

Corrupt input at feature time is refused by name, never skipped: prepare-data already checked every
image and path, so an image that does not decode, an entry pointing outside the dataset folder or a
shard that does not open means the disk changed under us, and skipping would silently change what a
stage trains on under the same data version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from pixart import atomic
from pixart.data.buckets import Buckets, nearest_bucket
from pixart.data.feature_identity import CACHE_FORMAT, cache_components, cache_key
from pixart.data.format import DATA_INFO, CaptionKind, DatasetError, Entry, load_dataset

log = logging.getLogger(__name__)

INDEX = "index.json"


def target_size(entry: Entry, resolution_px: int, buckets: Buckets | None) -> tuple[float, int, int]:
    """(bucket ratio, height, width) an entry is cropped to: its nearest bucket, or the square."""
    if buckets is None:
        return 1.0, resolution_px, resolution_px
    ratio = nearest_bucket(entry.height, entry.width, buckets)
    return ratio, *buckets[ratio]


def load_pixels(path: Path, height: int, width: int) -> torch.Tensor:
    """The image resized to cover height x width, center-cropped, as (3, H, W) in [-1, 1]."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    # PIL: UnidentifiedImageError / "image file is truncated" are OSErrors, a broken PNG chunk a SyntaxError
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}); prepare-data "
                           "checked it, so it changed on disk since: restore the dataset (dvc checkout) or re-run "
                           "prepare-data") from None
    scale = max(height / img.height, width / img.width)
    rh, rw = max(height, round(img.height * scale)), max(width, round(img.width * scale))
    img = img.resize((rw, rh), Image.Resampling.BICUBIC)
    top, left = (rh - height) // 2, (rw - width) // 2
    img = img.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return pixels / 127.5 - 1.0


def _read_index(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / INDEX).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def built_cache_key(out_dir: Path) -> str | None:
    """The content key of the feature cache built in ``out_dir`` (None where there is none): it
    changes with the VAE, the text encoder, the data and every encoding setting."""
    index = _read_index(Path(out_dir))
    return index and index.get("key")


def build_feature_cache(
    dataset_dir: Path,
    out_dir: Path,
    *,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    tokenizer: Any,
    resolution_px: int,
    caption_kind: CaptionKind,
    max_tokens: int,
    buckets: Buckets | None = None,
    quality: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    identity: dict[str, str] | None = None,
    work_dir: Path | None = None,
    dense_captions: Mapping[str, str] | None = None,
    raw_too: bool = False,
) -> Path:
    """Encode a dataset's images (VAE) and captions (T5) into ``out_dir``, unless it holds this key.

    ``buckets`` None center-crops squares of ``resolution_px``; otherwise each image goes to its
    nearest bucket. ``quality`` "high" keeps only the high-quality tier; ``limit`` keeps the first
    ``limit`` of what remains (the paper's high-resolution stages use fewer images). ``identity`` names what
    the hashes cannot see or what is too costly to hash (e.g. ``{"vae": "<known hash>"}``): a
    given ``vae`` / ``text_encoder`` / ``tokenizer`` entry replaces that computed hash, and every
    entry enters the key, as do the two models' dtypes. ``dense_captions`` (entry path -> caption:
    the recaption stage's) replaces data_info.json's dense captions, and enters the key. ``raw_too``
    also stores each item's raw caption features (``raw_text``, ``raw_mask``), for a caption mix.

    Shards are written one by one into a work folder named after the key,
    ``<work_dir>/<name>-<key[:12]>`` (``work_dir`` default: ``.partial`` beside ``out_dir``; a DVC
    stage keeps it outside its outs, which DVC deletes before a re-run), and shards already there are
    not encoded again: a killed build resumes shard by shard. Under a ``torch.distributed`` process group, rank r encodes the shards
    n with n % world == r; when every rank is done, rank 0 writes the index, with the latent range
    merged from the ranges each shard carries, and moves the cache into place. Every rank returns
    once it is there; its bytes are the same for any number of processes.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if caption_kind not in ("raw", "dense"):
        raise ValueError(f"caption_kind: '{caption_kind}' is not 'raw' or 'dense'")
    if quality not in (None, "high"):
        raise ValueError(f"quality: '{quality}' is not None or 'high'")
    _refuse_outside(dataset_dir)
    components = cache_components(dataset_dir, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                  resolution_px=resolution_px, caption_kind=caption_kind, max_tokens=max_tokens,
                                  buckets=buckets, quality=quality, limit=limit, identity=identity,
                                  dense_captions=dense_captions, raw_too=raw_too)
    key = cache_key(components)
    existing = _read_index(out_dir)
    if existing is not None and existing.get("key") == key:
        for name in existing["shards"]:  # a header read each: a set that changed on disk is not up to date
            open_shard(out_dir / name)
        log.info("feature cache %s is up to date (key %s)", out_dir, key[:12])
        return out_dir

    entries = load_dataset(dataset_dir)
    if dense_captions is not None:
        entries = [e.model_copy(update={"sharegpt4v": dense_captions[e.path]}) for e in entries]
    batches = _batches(dataset_dir, entries, resolution_px, buckets, caption_kind, quality, limit, batch_size)
    shards = [f"shard-{n:05d}.safetensors" for n in range(len(batches))]
    work_dir = Path(work_dir) if work_dir is not None else out_dir.parent / ".partial"
    partial = work_dir / f"{out_dir.name}-{key[:12]}"
    partial.mkdir(parents=True, exist_ok=True)
    rank, world = _rank_and_world()
    todo = [n for n in range(rank, len(batches), world) if not (partial / shards[n]).is_file()]
    if rank == 0:
        log.info("building feature cache %s: %d shards, %d done, %d process(es)", out_dir, len(batches),
                 sum((partial / name).is_file() for name in shards), world)
    with torch.inference_mode():
        for n in tqdm(todo, desc=f"feature cache {out_dir.name}", leave=False, disable=rank != 0):
            (_, height, width), batch = batches[n]
            pixels = torch.stack([load_pixels(dataset_dir / entries[i].path, height, width) for i in batch])
            captions = [entries[i].caption(caption_kind) for i in batch]
            raw = [entries[i].prompt for i in batch] if raw_too else None
            tensors, metadata = _encode_shard(vae, text_encoder, tokenizer, pixels, captions, max_tokens, raw)
            _write_shard(partial / shards[n], tensors, metadata)
    _barrier()
    if rank == 0:
        _publish(partial, out_dir, _index(key, components, batches, [partial / name for name in shards]), work_dir)
    _barrier()
    return out_dir


def _refuse_outside(dataset_dir: Path) -> None:
    """Refuse an entry whose path leaves the dataset folder (absolute or '..'), before any image is
    read. Lexical, as prepare-data's check: a dataset checked out as symlinks into DVC's cache is fine."""
    for i, entry in enumerate(load_dataset(dataset_dir)):
        norm = posixpath.normpath(entry.path)
        if posixpath.isabs(entry.path) or norm == ".." or norm.startswith("../"):
            raise DatasetError(f"{dataset_dir / DATA_INFO}: entry {i}: path '{entry.path}' is outside the dataset "
                               f"folder {dataset_dir}; prepare-data refuses such entries, so the file changed after it")


def _batches(dataset_dir: Path, entries: Sequence[Entry], resolution_px: int, buckets: Buckets | None,
             caption_kind: CaptionKind, quality: str | None, limit: int | None,
             batch_size: int) -> list[tuple[tuple[float, int, int], list[int]]]:
    """The encoding batches, one per shard: ((ratio, height, width), entry indices), in shard order."""
    selected = [i for i, e in enumerate(entries) if quality is None or e.quality == quality][:limit]
    if not selected:
        raise DatasetError(f"{dataset_dir}: no entries with quality={quality!r}")
    groups: dict[tuple[float, int, int], list[int]] = {}
    for i in selected:
        if not entries[i].caption(caption_kind).strip():
            raise DatasetError(f"{dataset_dir}: entry {i} ({entries[i].path}) has no {caption_kind} caption")
        groups.setdefault(target_size(entries[i], resolution_px, buckets), []).append(i)
    return [(size, items[s:s + batch_size]) for size, items in sorted(groups.items())
            for s in range(0, len(items), batch_size)]


def _encode_shard(vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any, pixels: torch.Tensor,
                 captions: Sequence[str], max_tokens: int,
                 raw_captions: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One shard's tensors, fp32 on the CPU whatever the models' device and dtype, and its metadata:
    the per-channel range of its latents' means, which the index merges. ``raw_captions`` adds their
    features as ``raw_text`` / ``raw_mask``."""
    from pixart.models.builders import encode_captions

    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    mean = dist.mean.float().cpu().contiguous()
    tensors = {"latent_mean": mean, "latent_std": dist.std.float().cpu().contiguous()}
    for prefix, texts in (("", captions), ("raw_", raw_captions)):
        if texts is not None:
            text, mask = encode_captions(text_encoder, tokenizer, texts, max_tokens, pad_to_max=False)
            tensors |= {f"{prefix}text": text.float().cpu().contiguous(),
                        f"{prefix}mask": mask.to(torch.int8).cpu().contiguous()}
    latent_range = {"low": mean.amin(dim=(0, 2, 3)).tolist(), "high": mean.amax(dim=(0, 2, 3)).tolist()}
    # one key: safetensors writes a metadata map in a random order, and shards must be reproducible
    return tensors, {"latent_range": json.dumps(latent_range, sort_keys=True)}


def _write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A shard file exists only whole: a killed rank leaves a temp file, never a truncated shard."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def _index(key: str, components: dict[str, Any], batches: Sequence[tuple[tuple[float, int, int], list[int]]],
           shards: Sequence[Path]) -> dict[str, Any]:
    missing = [path.name for path in shards if not path.is_file()]
    if missing:
        raise RuntimeError(f"{shards[0].parent}: {len(missing)} shards missing after every rank finished "
                           f"({missing[0]}, ...)")
    items = [{"index": i, "shard": n, "row": row, "ratio": ratio, "height": height, "width": width}
             for n, ((ratio, height, width), batch) in enumerate(batches) for row, i in enumerate(batch)]
    return {"key": key, "components": components, "shards": [path.name for path in shards], "items": items,
            "latent_range": _merged_range(shards)}


def _merged_range(shards: Sequence[Path]) -> dict[str, list[float]]:
    """The cache's per-channel latent range from its shards' (exact: a min of mins)."""
    ranges = [json.loads(open_shard(path).metadata()["latent_range"]) for path in shards]
    return {"low": [min(c) for c in zip(*(r["low"] for r in ranges), strict=True)],
            "high": [max(c) for c in zip(*(r["high"] for r in ranges), strict=True)]}


def _publish(partial: Path, out_dir: Path, index: dict[str, Any], work_dir: Path) -> None:
    """Replace ``out_dir`` by the finished shards and the index in one rename, then drop this set's
    work folders (this key's and any an interrupted build of another key left)."""
    with atomic.folder(out_dir) as tmp:
        for name in index["shards"]:
            _link_or_copy(partial / name, tmp / name)
        atomic.write_json(tmp / INDEX, index)
    for work in work_dir.glob(f"{out_dir.name}-" + "?" * 12):
        shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):  # other sets' work folders may still be there
        work_dir.rmdir()


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link keeps the work folder whole until the cache is in place, at no cost in disk."""
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def open_shard(path: Path) -> Any:
    """A shard, memory-mapped; one that is missing, truncated or not safetensors is refused by name
    (safetensors checks that the header covers the file exactly)."""
    try:
        return safe_open(str(path), framework="pt")
    except (OSError, SafetensorError) as exc:
        raise DatasetError(f"{path}: feature shard does not open ({type(exc).__name__}: {exc}); it changed on disk "
                           f"after it was written: delete {Path(path).parent} and rebuild it (dvc repro)") from None


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class FeatureCache(torch.utils.data.Dataset):
    """A built feature cache as a dataset of dicts: latent_mean, latent_std, text, mask, height,
    width, index (the entry's position in data_info.json).

    ``text`` / ``mask`` come trimmed to the item's real tokens (``pad_to`` None) or padded to
    ``pad_to`` tokens; ``collate`` pads a batch to its longest caption. Shards are memory-mapped.
    """

    def __init__(self, out_dir: Path, pad_to: int | None = None):
        self.dir = Path(out_dir)
        index = _read_index(self.dir)
        if index is None:
            raise FileNotFoundError(f"{self.dir / INDEX}: missing or unreadable; build the feature cache first")
        if index["components"].get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.dir / INDEX}: feature cache format {index['components'].get('format')}, this "
                             f"code reads format {CACHE_FORMAT}; rebuild it (dvc repro features)")
        self.key: str = index["key"]
        self.components: dict[str, Any] = index["components"]
        self.items: list[dict[str, Any]] = index["items"]
        self.shards: list[str] = index["shards"]
        self._latent_range: dict[str, list[float]] = index["latent_range"]
        self.pad_to = pad_to
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ratios(self) -> list[float]:
        """Bucket ratio of each item, for AspectRatioBatchSampler."""
        return [item["ratio"] for item in self.items]

    def latent_range(self) -> tuple[list[float], list[float]]:
        """Per-channel minimum and maximum of the cached latents' posterior means (unscaled): the
        range of the data a stage trains on, which its sampler keeps the predicted x0 inside.
        Recorded while encoding, so that an export never rereads the latents (hundreds of GB at xl)."""
        return self._latent_range["low"], self._latent_range["high"]

    def _shard(self, n: int) -> Any:
        if n not in self._open:
            self._open[n] = open_shard(self.dir / self.shards[n])
        return self._open[n]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        shard, row = self._shard(item["shard"]), item["row"]
        mask = shard.get_slice("mask")[row:row + 1][0].long()
        length = int(mask.sum())
        text = shard.get_slice("text")[row:row + 1][0, :length]
        out = {
            **(self._raw(shard, row) if self.has_raw else {}),
            "latent_mean": shard.get_slice("latent_mean")[row:row + 1][0],
            "latent_std": shard.get_slice("latent_std")[row:row + 1][0],
            "text": text,
            "mask": torch.ones(length, dtype=torch.long),
            "height": item["height"],
            "width": item["width"],
            "index": item["index"],
        }
        if self.pad_to is not None:
            out["text"], out["mask"] = _pad([text], self.pad_to)
            out["text"], out["mask"] = out["text"][0], out["mask"][0]
        return out

    @property
    def has_raw(self) -> bool:
        """Whether its items carry their raw captions' features too (a caption-mix set)."""
        return bool(self.components.get("raw_too"))

    @staticmethod
    def _raw(shard: Any, row: int) -> dict[str, torch.Tensor]:
        length = int(shard.get_slice("raw_mask")[row:row + 1][0].long().sum())
        return {"raw_text": shard.get_slice("raw_text")[row:row + 1][0, :length],
                "raw_mask": torch.ones(length, dtype=torch.long)}

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack a single-size batch; text and mask (and raw_text and raw_mask, when present) padded to
        the batch's longest caption."""
        sizes = {(it["height"], it["width"]) for it in items}
        if len(sizes) != 1:
            raise ValueError(f"collate: a batch must share one size (use AspectRatioBatchSampler), got {sorted(sizes)}")
        texts = [it["text"][: int(it["mask"].sum())] for it in items]
        text, mask = _pad(texts, max(t.shape[0] for t in texts))
        raw = {}
        if "raw_text" in items[0]:
            raws = [it["raw_text"] for it in items]
            raw = dict(zip(("raw_text", "raw_mask"), _pad(raws, max(t.shape[0] for t in raws)), strict=True))
        return {
            **raw,
            "latent_mean": torch.stack([it["latent_mean"] for it in items]),
            "latent_std": torch.stack([it["latent_std"] for it in items]),
            "text": text,
            "mask": mask,
            "height": torch.tensor([it["height"] for it in items]),
            "width": torch.tensor([it["width"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }


def _pad(texts: Sequence[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (L_i, C) features to (B, length, C) with a (B, length) mask; padding is masked out."""
    if any(t.shape[0] > length for t in texts):
        raise ValueError(f"pad: a caption has more than {length} tokens")
    text = torch.zeros(len(texts), length, texts[0].shape[1], dtype=texts[0].dtype)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for b, t in enumerate(texts):
        text[b, : t.shape[0]] = t
        mask[b, : t.shape[0]] = 1
    return text, mask
