"""PixArt-Sigma transformer: diffusers' PixArtTransformer2DModel plus KV token compression in its config.

The stock class cannot carry KV compression through ``from_pretrained``: the processor's parameters are
dropped as unexpected keys and the model silently runs uncompressed. ``PixArtSigmaTransformer`` stores
``kv_compress_layers`` in ``config.json`` and attaches the processors in ``__init__``, so
``from_pretrained`` (and ``PixArtSigmaPipeline.from_pretrained``, which names this class through
``model_index.json``) rebuilds them and loads their weights strictly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

# diffusers' pipeline loader finds a custom component's load method by looking up its base class
# (``ModelMixin``) by name in the module that model_index.json names, i.e. this one.
from diffusers import (
    ModelMixin,  # noqa: F401
    PixArtTransformer2DModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from pixart.models.kv_compress import KVCompressAttnProcessor
from pixart.models.specs import ModelSpec


class PixArtSigmaTransformer(PixArtTransformer2DModel):
    """``PixArtTransformer2DModel`` whose self-attention in ``kv_compress_layers`` uses KV compression."""

    # The parent's arguments are spelled out: diffusers builds config.json and from_config from the
    # signature, so *args/**kwargs would lose them.
    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = 8,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = 1152,
        attention_bias: bool = True,
        sample_size: int = 128,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        interpolation_scale: float | None = None,
        use_additional_conditions: bool | None = False,
        caption_channels: int | None = None,
        attention_type: str | None = "default",
        kv_compress_layers: Sequence[int] = (),
    ) -> None:
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            num_layers=num_layers,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            attention_bias=attention_bias,
            sample_size=sample_size,
            patch_size=patch_size,
            activation_fn=activation_fn,
            num_embeds_ada_norm=num_embeds_ada_norm,
            upcast_attention=upcast_attention,
            norm_type=norm_type,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            interpolation_scale=interpolation_scale,
            use_additional_conditions=use_additional_conditions,
            caption_channels=caption_channels,
            attention_type=attention_type,
        )
        self._attach_kv_compression(kv_compress_layers)

    def _attach_kv_compression(self, layers: Iterable[int]) -> None:
        depth = len(self.transformer_blocks)
        for index in layers:
            if not 0 <= index < depth:
                raise ValueError(f"kv_compress_layers: layer {index} outside 0..{depth - 1}")
            attn = self.transformer_blocks[index].attn1
            if not isinstance(attn.processor, KVCompressAttnProcessor):
                like = attn.to_k.weight
                attn.set_processor(
                    KVCompressAttnProcessor(self.inner_dim).to(device=like.device, dtype=like.dtype)
                )

    def kv_compress_processors(self) -> dict[int, KVCompressAttnProcessor]:
        """Layer index -> its KV compression processor."""
        return {
            i: block.attn1.processor
            for i, block in enumerate(self.transformer_blocks)
            if isinstance(block.attn1.processor, KVCompressAttnProcessor)
        }

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        patch = self.config.patch_size
        grid = (hidden_states.shape[-2] // patch, hidden_states.shape[-1] // patch)
        for processor in self.kv_compress_processors().values():
            processor.token_grid = grid
        return super().forward(hidden_states, *args, **kwargs)


def pe_interpolation(resolution_px_paper: int) -> float:
    """PE interpolation scale of a stage: the paper's nominal resolution / 512 (256 -> 0.5, 1024 -> 2).

    The tiny profile renders at a fraction of the paper's resolution but passes the nominal resolution of
    the stage it mirrors, so that its positions span the same range as the paper's.
    """
    if resolution_px_paper <= 0:
        raise ValueError(f"resolution_px_paper must be positive, got {resolution_px_paper}")
    return resolution_px_paper / 512


def build_transformer(
    spec: ModelSpec,
    *,
    sample_size: int,
    interpolation_scale: float,
    kv_compress_layers: Sequence[int] | None = None,
) -> PixArtSigmaTransformer:
    """A freshly initialised transformer of ``spec`` for latents of side ``sample_size``.

    ``kv_compress_layers=None`` builds it uncompressed (the stages before KV compression); pass
    ``spec.kv_compress_layers`` for the KV stages.
    """
    return PixArtSigmaTransformer(
        num_attention_heads=spec.num_heads,
        attention_head_dim=spec.head_dim,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        num_layers=spec.depth,
        cross_attention_dim=spec.hidden_size,
        sample_size=sample_size,
        patch_size=spec.patch_size,
        caption_channels=spec.caption_channels,
        interpolation_scale=interpolation_scale,
        # Sigma has no micro-conditions; diffusers would switch them on for sample_size 128 (1024 px).
        use_additional_conditions=False,
        kv_compress_layers=list(kv_compress_layers or ()),
    )


def set_resolution(model: PixArtTransformer2DModel, sample_size: int, interpolation_scale: float) -> None:
    """Move ``model`` to a new stage resolution: config, PE base size, PE scale and the cached PE.

    diffusers recomputes the PE for any grid other than ``sample_size // patch`` as
    ``arange(n) / (n / base_size) / interpolation_scale`` with ``base_size = sample_size // patch``; the
    official PixArt does the same with its ``base_size`` and ``pe_interpolation``. Both must change
    together, or positions drift from the range the model was trained on.
    """
    if sample_size % model.config.patch_size:
        raise ValueError(
            f"sample_size {sample_size} is not a multiple of patch_size {model.config.patch_size}"
        )
    embed = model.pos_embed
    side = sample_size // model.config.patch_size
    embed.height = embed.width = embed.base_size = side
    embed.interpolation_scale = interpolation_scale
    pe = get_2d_sincos_pos_embed(
        embed.pos_embed.shape[-1],
        side,
        base_size=side,
        interpolation_scale=interpolation_scale,
        output_type="pt",
    )
    embed.pos_embed = pe.unsqueeze(0).to(embed.pos_embed)
    model.height = model.width = sample_size
    model.register_to_config(sample_size=sample_size, interpolation_scale=interpolation_scale)


def enable_kv_compression(model: PixArtSigmaTransformer, layers: Sequence[int]) -> None:
    """Turn KV compression on in ``layers`` of a (possibly uncompressed) model: the adaption path.

    New processors start at the averaging init; layers already compressed keep their weights.
    """
    model._attach_kv_compression(layers)
    merged = sorted(set(model.config.kv_compress_layers) | set(layers))
    model.register_to_config(kv_compress_layers=merged)
