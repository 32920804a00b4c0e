"""KV token compression (PixArt-Sigma, section 3.3) as a diffusers attention processor.

Self-attention keeps all N queries, but its keys and values are downsampled 2x2 on the token grid by
one depthwise Conv2d (k = s = 2) followed by a LayerNorm; the same module compresses K and V. The conv
starts at 1/4 with bias 0, so at initialisation it is a 2x2 average: that is how an uncompressed
checkpoint adapts to compression. The processor is an ``nn.Module``, so its parameters live in the
transformer's state dict under ``transformer_blocks.<i>.attn1.processor.{conv,norm}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

# PixArt-Sigma compresses each side of the token grid by 2.
COMPRESSION = 2


class KVCompressAttnProcessor(nn.Module):
    """Scaled dot-product self-attention with K and V compressed 2x2 on the token grid.

    The transformer sets ``token_grid`` (tokens per column, per row) before each forward, because a
    processor only sees the flattened sequence and the grid's aspect ratio varies per batch.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(hidden_size, hidden_size, COMPRESSION, stride=COMPRESSION, groups=hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-5)
        self.token_grid: tuple[int, int] | None = None
        self.reset_to_average()

    @torch.no_grad()
    def reset_to_average(self) -> None:
        """The averaging init: conv = 2x2 mean, LayerNorm = identity affine."""
        self.conv.weight.fill_(1.0 / COMPRESSION**2)
        self.conv.bias.zero_()
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()

    def compress(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, H*W, C) tokens in row-major grid order -> (B, H*W/4, C)."""
        if self.token_grid is None:
            raise RuntimeError("KV compression needs the token grid; PixArtSigmaTransformer.forward sets it")
        height, width = self.token_grid
        batch, count, channels = tokens.shape
        if count != height * width:
            raise ValueError(f"KV compression: {count} tokens do not fill the token grid {height}x{width}")
        if height % COMPRESSION or width % COMPRESSION:
            raise ValueError(
                f"KV compression needs an even token grid on both sides, got {height}x{width} "
                f"(tokens per column x per row); choose an image size whose latent grid / patch is even"
            )
        grid = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        return self.norm(self.conv(grid).flatten(2).transpose(1, 2))

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "KV compression applies to unmasked self-attention only (attn1 of a PixArt block)"
            )
        batch = hidden_states.shape[0]
        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = self.compress(attn.to_k(hidden_states))
        value = self.compress(attn.to_v(hidden_states))
        head_dim = query.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor
