"""What a feature cache is: the content key of everything that determines its bytes.

A cache folder (``pixart.data.features``) is keyed by a content hash of its components: dataset
version, VAE / text-encoder / tokenizer hashes, the two models' dtypes, resolution, buckets, caption
kind, max tokens, quality filter, limit and the cache format. The same key is never recomputed, a
different one always is, so the folder is a sound DVC stage output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pixart.data.buckets import Buckets
from pixart.data.format import CaptionKind, dataset_version

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


def cache_components(
    dataset_dir: Path,
    *,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    tokenizer: Any,
    resolution_px: int,
    caption_kind: CaptionKind,
    max_tokens: int,
    buckets: Buckets | None,
    quality: str | None,
    limit: int | None,
    identity: dict[str, str] | None,
    dense_captions: Mapping[str, str] | None = None,
    raw_too: bool = False,
) -> dict[str, Any]:
    """Everything a cache's bytes depend on (``build_feature_cache``'s arguments, hashed): a given
    ``vae`` / ``text_encoder`` / ``tokenizer`` entry of ``identity`` replaces that computed hash, and
    every other entry enters as it is."""
    identity = dict(identity or {})
    return {
        "format": CACHE_FORMAT,
        "dataset_version": dataset_version(dataset_dir),
        "vae": identity.pop("vae", None) or weights_hash(vae),
        "text_encoder": identity.pop("text_encoder", None) or weights_hash(text_encoder),
        "tokenizer": identity.pop("tokenizer", None) or tokenizer_hash(tokenizer),
        # a folder hash cannot see that T5 ran in bf16: its features differ from fp32's
        "dtypes": {"vae": str(vae.dtype), "text_encoder": str(text_encoder.dtype)},
        "resolution_px": resolution_px,
        "buckets": None if buckets is None else sorted([r, list(hw)] for r, hw in buckets.items()),
        "caption_kind": caption_kind,
        "max_tokens": max_tokens,
        "quality": quality,
        "limit": limit,
        "identity": identity,
        # recaptions replace the dataset's dense captions: their text is part of what is encoded
        **({} if dense_captions is None else {"dense_captions": hashlib.sha256(
            json.dumps(dict(dense_captions), sort_keys=True).encode()).hexdigest()}),
        **({"raw_too": True} if raw_too else {}),
    }


def cache_key(components: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()
