"""PixArt-Sigma model pieces. Saved pipelines name ``pixart.models.transformer.PixArtSigmaTransformer``
in ``model_index.json``; diffusers resolves it from an already imported module, so import
``pixart.models.transformer`` (or use ``pixart.models.pipeline.load_pipeline``) before loading.

``PixArtSigmaTransformer`` is exported lazily, so that ``pixart.models.specs`` stays cheap to import
(diffusers costs seconds)."""

from __future__ import annotations

from typing import Any

__all__ = ["PixArtSigmaTransformer"]


def __getattr__(name: str) -> Any:
    if name == "PixArtSigmaTransformer":
        from pixart.models.transformer import PixArtSigmaTransformer

        return PixArtSigmaTransformer
    raise AttributeError(f"module 'pixart.models' has no attribute {name!r}")
