"""Model specs: the transformer and text-encoder shapes of each scale, by name.

``xl`` is PixArt-Sigma XL/2 from the paper; ``xl-rehearsal`` is its structure at a debug width;
``tiny`` is sized for the CPU curriculum; ``debug`` is the
smallest model that still exercises every code path (KV compression included) in tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextEncoderSpec:
    """Shape of a randomly initialised T5 encoder (debug; xl and tiny load a pretrained one)."""

    d_model: int
    num_layers: int
    num_heads: int
    d_kv: int
    d_ff: int


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a PixArt-Sigma transformer.

    ``kv_compress_layers`` are the blocks that get KV token compression in the KV stages (paper: 14-27
    of 28); models of the earlier stages are built without it. ``text_encoder`` is None where the
    text encoder is a pretrained one loaded from a path (xl: T5-XXL, tiny: MiniLM).
    """

    name: str
    depth: int
    num_heads: int
    head_dim: int
    patch_size: int
    caption_channels: int
    kv_compress_layers: tuple[int, ...]
    text_encoder: TextEncoderSpec | None
    in_channels: int = 4
    # learned sigma: the model predicts epsilon and the variance interpolation v, 4 channels each
    out_channels: int = 8
    mlp_ratio: int = 4

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    def __post_init__(self) -> None:
        bad = [i for i in self.kv_compress_layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"spec {self.name!r}: kv_compress_layers {bad} outside 0..{self.depth - 1}")
        if self.text_encoder is not None and self.text_encoder.d_model != self.caption_channels:
            raise ValueError(
                f"spec {self.name!r}: text_encoder.d_model {self.text_encoder.d_model} != caption_channels "
                f"{self.caption_channels}"
            )


SPECS: dict[str, ModelSpec] = {
    "xl": ModelSpec(
        name="xl",
        depth=28,
        num_heads=16,
        head_dim=72,
        patch_size=2,
        caption_channels=4096,  # T5-XXL
        kv_compress_layers=tuple(range(14, 28)),
        text_encoder=None,
    ),
    # the XL/2 structure (depth, KV layers, patch, channels) at a width a CPU trains in seconds:
    # the xl-rehearsal profile's model, with a stand-in T5 of d_model 32
    "xl-rehearsal": ModelSpec(
        name="xl-rehearsal",
        depth=28,
        num_heads=2,
        head_dim=16,
        patch_size=2,
        caption_channels=32,
        kv_compress_layers=tuple(range(14, 28)),
        text_encoder=None,
    ),
    "tiny": ModelSpec(
        name="tiny",
        depth=6,
        num_heads=4,
        head_dim=32,
        patch_size=2,
        caption_channels=384,  # MiniLM-L6, the packaged encoder of the tiny profile
        kv_compress_layers=(3, 4, 5),  # the top half, as 14-27 of 28
        text_encoder=None,
    ),
    "debug": ModelSpec(
        name="debug",
        depth=2,
        num_heads=2,
        head_dim=8,
        patch_size=2,
        caption_channels=16,
        kv_compress_layers=(1,),
        text_encoder=TextEncoderSpec(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32),
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``; a clear error lists the known names."""
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model spec {name!r}; known specs: {', '.join(SPECS)}") from None
