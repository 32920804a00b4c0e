"""Model FLOPs of one PixArt-Sigma transformer forward, counted analytically from the spec.

The basis of MFU (model FLOPs utilisation): only the matrix products are counted, 2 FLOPs per
multiply-add, as MFU conventionally does; layer norms, GELU, softmax and the modulation are
elementwise, O(N h) against the products' O(N h^2), and left out. Per sample, with N image tokens,
L text tokens, hidden size h, patch p, MLP ratio r:

    patch embedding      Conv2d(C_in, h, p, stride p)               2 N C_in p^2 h
    adaLN-single         timestep MLP 256 -> h -> h, then h -> 6h   2 (256 h + 7 h^2)
    caption projection   C_cap -> h -> h over the L text tokens     2 L (C_cap h + h^2)
    per block
      self-attention     q, k, v and output projections             8 N h^2
                         scores and weighted sum over M keys        4 N M h   (M = N; N/4 compressed)
                         KV compression: 2x2 depthwise conv, K, V   4 N h     (compressed blocks)
      cross-attention    q and output projections                   4 N h^2
                         k and v projections of the L text tokens   4 L h^2
                         scores and weighted sum over L keys        4 N L h
      MLP                h -> r h -> h                              4 r N h^2
    final layer          h -> p^2 C_out                             2 N h p^2 C_out

Training costs 3 forwards (the backward computes the gradients of inputs and of weights: two
products per forward product); gradient checkpointing recomputes the blocks' forward once more, so
the hardware runs about 4 forwards (the patch embedding, caption projection and final layer are not
recomputed: < 0.2 % at xl) while the model FLOPs stay at 3. ``bench/gpu_check.py`` checks the
forward count against ``torch.utils.flop_counter.FlopCounterMode`` (exact for the debug spec on CPU
and for xl at 1024^2 on the meta device).
"""

from __future__ import annotations

from collections.abc import Collection

from pixart.models.specs import ModelSpec

TIMESTEP_FREQUENCIES = 256  # diffusers' sinusoidal timestep features, the adaLN-single MLP's input


def forward_flops(
    spec: ModelSpec, image_tokens: int, text_tokens: int, kv_compress_layers: Collection[int] = ()
) -> dict[str, int]:
    """Matmul FLOPs of one forward of one sample, by part; ``sum(...values())`` is the total.

    ``kv_compress_layers`` are the blocks whose keys and values are compressed 2x2 (none: the model of
    the stages before KV compression; ``spec.kv_compress_layers`` for the KV stages).
    """
    from pixart.models.kv_compress import COMPRESSION  # here: importing it imports diffusers (seconds)

    n, l, h = image_tokens, text_tokens, spec.hidden_size
    patch_area = spec.patch_size**2
    compressed = sum(1 for i in range(spec.depth) if i in set(kv_compress_layers))
    plain = spec.depth - compressed
    n_kv = n // COMPRESSION**2
    return {
        "patch_embed": 2 * n * spec.in_channels * patch_area * h,
        "timestep": 2 * (TIMESTEP_FREQUENCIES * h + h * h + 6 * h * h),
        "caption_projection": 2 * l * (spec.caption_channels * h + h * h),
        "self_attn_proj": spec.depth * 8 * n * h * h,
        "self_attn_scores": (plain * 4 * n * n + compressed * 4 * n * n_kv) * h,
        "kv_compress": compressed * 2 * 2 * n_kv * COMPRESSION**2 * h,
        "cross_attn_proj": spec.depth * (4 * n * h * h + 4 * l * h * h),
        "cross_attn_scores": spec.depth * 4 * n * l * h,
        "mlp": spec.depth * 4 * spec.mlp_ratio * n * h * h,
        "final": 2 * n * h * patch_area * spec.out_channels,
    }


def training_flops(
    spec: ModelSpec,
    image_tokens: int,
    text_tokens: int,
    kv_compress_layers: Collection[int] = (),
    *,
    grad_checkpointing: bool = False,
) -> tuple[int, int]:
    """(model FLOPs, hardware FLOPs) of one training step of one sample: 3 forwards, and 4 for the
    hardware when gradient checkpointing recomputes each block's forward."""
    forward = sum(forward_flops(spec, image_tokens, text_tokens, kv_compress_layers).values())
    return 3 * forward, (4 if grad_checkpointing else 3) * forward
