"""The feature cache: VAE latents and T5 features computed once, read by every training step.

PixArt trains on pre-extracted features (the official ``load_vae_feat`` / ``load_t5_feat``). Here
a cache folder holds safetensors shards — one per encoding batch, all items of a shard the same
size — and ``index.json``. The folder is keyed by a content hash of everything that determines its
bytes (dataset version, VAE / text-encoder / tokenizer hashes, resolution, buckets, caption kind,
max tokens, quality filter): the same key is never recomputed, a different one always is, so the
folder is a sound DVC stage output. Latents are stored unscaled as ``latent_dist.mean`` and
``.std``, so the trainer samples a fresh latent per step and applies the VAE's scaling factor.
Text features are stored trimmed to the shard's longest real token count, not padded to
``max_tokens``; the loader pads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from pixart import atomic
from pixart.data.buckets import Buckets, nearest_bucket
from pixart.data.format import CaptionKind, DatasetError, Entry, dataset_version, load_dataset

log = logging.getLogger(__name__)

INDEX = "index.json"
# Bump when the shard layout changes, so that old caches are recomputed rather than misread.
CACHE_FORMAT = 2  # 2: the index holds the latents' per-channel range


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over the module's state_dict: names, dtypes, shapes and bytes, in sorted key order."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of a tokenizer's definition (the fast tokenizer's JSON, else its vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        definition: Any = sorted(tokenizer.get_vocab().items())
    else:
        definition = json.loads(backend.to_str())
        # the last call's padding / truncation settings live in the JSON too; they are not identity
        definition.pop("padding", None)
        definition.pop("truncation", None)
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def target_size(entry: Entry, resolution_px: int, buckets: Buckets | None) -> tuple[float, int, int]:
    """(bucket ratio, height, width) an entry is cropped to: its nearest bucket, or the square."""
    if buckets is None:
        return 1.0, resolution_px, resolution_px
    ratio = nearest_bucket(entry.height, entry.width, buckets)
    return ratio, *buckets[ratio]


def load_pixels(path: Path, height: int, width: int) -> torch.Tensor:
    """The image resized to cover height x width, center-cropped, as (3, H, W) in [-1, 1]."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = max(height / img.height, width / img.width)
        rh, rw = max(height, round(img.height * scale)), max(width, round(img.width * scale))
        img = img.resize((rw, rh), Image.Resampling.BICUBIC)
        top, left = (rh - height) // 2, (rw - width) // 2
        img = img.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return pixels / 127.5 - 1.0


def cache_key(components: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()


def _read_index(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / INDEX).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def feature_key(out_dir: Path) -> str | None:
    """The content key of the feature cache in ``out_dir`` (None where there is none): it changes
    with the VAE, the text encoder, the data and every encoding setting."""
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
) -> Path:
    """Encode a dataset's images (VAE) and captions (T5) into ``out_dir``, unless it holds this key.

    ``buckets`` None center-crops squares of ``resolution_px``; otherwise each image goes to its
    nearest bucket. ``quality`` "high" keeps only the high-quality tier; ``limit`` keeps the first
    ``limit`` of what remains (the paper's high-resolution stages use fewer images). ``identity`` names what
    the hashes cannot see or what is too costly to hash (e.g. ``{"vae": "<known hash>"}``): a
    given ``vae`` / ``text_encoder`` / ``tokenizer`` entry replaces that computed hash, and every
    entry enters the key.
    """
    from pixart.models.builders import encode_captions

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if caption_kind not in ("raw", "dense"):
        raise ValueError(f"caption_kind: '{caption_kind}' is not 'raw' or 'dense'")
    if quality not in (None, "high"):
        raise ValueError(f"quality: '{quality}' is not None or 'high'")
    identity = dict(identity or {})
    components: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "dataset_version": dataset_version(dataset_dir),
        "vae": identity.pop("vae", None) or weights_hash(vae),
        "text_encoder": identity.pop("text_encoder", None) or weights_hash(text_encoder),
        "tokenizer": identity.pop("tokenizer", None) or tokenizer_hash(tokenizer),
        "resolution_px": resolution_px,
        "buckets": None if buckets is None else sorted([r, list(hw)] for r, hw in buckets.items()),
        "caption_kind": caption_kind,
        "max_tokens": max_tokens,
        "quality": quality,
        "limit": limit,
        "identity": identity,
    }
    key = cache_key(components)
    existing = _read_index(out_dir)
    if existing is not None and existing.get("key") == key:
        log.info("feature cache %s is up to date (key %s)", out_dir, key[:12])
        return out_dir

    entries = load_dataset(dataset_dir)
    selected = [i for i, e in enumerate(entries) if quality is None or e.quality == quality][:limit]
    if not selected:
        raise DatasetError(f"{dataset_dir}: no entries with quality={quality!r}")
    groups: dict[tuple[float, int, int], list[int]] = {}
    for i in selected:
        if not entries[i].caption(caption_kind).strip():
            raise DatasetError(f"{dataset_dir}: entry {i} ({entries[i].path}) has no {caption_kind} caption")
        groups.setdefault(target_size(entries[i], resolution_px, buckets), []).append(i)
    batches = [
        (size, items[s:s + batch_size]) for size, items in sorted(groups.items()) for s in range(0, len(items), batch_size)
    ]

    log.info("building feature cache %s: %d items, %d shards", out_dir, len(selected), len(batches))
    shards, items = [], []
    low = high = None
    with atomic.folder(out_dir) as tmp, torch.inference_mode():
        for n, ((ratio, height, width), batch) in enumerate(tqdm(batches, desc="feature cache", leave=False)):
            pixels = torch.stack([load_pixels(dataset_dir / entries[i].path, height, width) for i in batch])
            dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
            captions = [entries[i].caption(caption_kind) for i in batch]
            text, mask = encode_captions(text_encoder, tokenizer, captions, max_tokens, pad_to_max=False)
            name = f"shard-{n:05d}.safetensors"
            save_file(
                {
                    "latent_mean": dist.mean.float().cpu().contiguous(),
                    "latent_std": dist.std.float().cpu().contiguous(),
                    "text": text.float().cpu().contiguous(),
                    "mask": mask.to(torch.int8).cpu().contiguous(),
                },
                tmp / name,
            )
            mean = dist.mean.float().cpu()
            low = torch.minimum(low, mean.amin(dim=(0, 2, 3))) if low is not None else mean.amin(dim=(0, 2, 3))
            high = torch.maximum(high, mean.amax(dim=(0, 2, 3))) if high is not None else mean.amax(dim=(0, 2, 3))
            shards.append(name)
            items.extend(
                {"index": i, "shard": n, "row": row, "ratio": ratio, "height": height, "width": width}
                for row, i in enumerate(batch)
            )
        atomic.write_json(tmp / INDEX, {"key": key, "components": components, "shards": shards, "items": items,
                                        "latent_range": {"low": low.tolist(), "high": high.tolist()}})
    return out_dir


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
            self._open[n] = safe_open(str(self.dir / self.shards[n]), framework="pt")
        return self._open[n]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        shard, row = self._shard(item["shard"]), item["row"]
        mask = shard.get_slice("mask")[row:row + 1][0].long()
        length = int(mask.sum())
        text = shard.get_slice("text")[row:row + 1][0, :length]
        out = {
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

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack a single-size batch; text and mask padded to the batch's longest caption."""
        sizes = {(it["height"], it["width"]) for it in items}
        if len(sizes) != 1:
            raise ValueError(f"collate: a batch must share one size (use AspectRatioBatchSampler), got {sorted(sizes)}")
        texts = [it["text"][: int(it["mask"].sum())] for it in items]
        text, mask = _pad(texts, max(t.shape[0] for t in texts))
        return {
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
