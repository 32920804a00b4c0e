"""Caption dropout for classifier-free guidance: a fraction p of captions becomes the null caption; and
the caption mix of the official configs (``real_prompt_ratio``): a fraction of dense captions becomes
the sample's raw one."""

from __future__ import annotations

import torch


def dropout_draws(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) bools, each True with probability ``p`` (paper: 0.1): which captions to drop. Drawn apart from
    ``drop_captions`` so that a distributed trainer can draw for the global batch and slice per rank."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout p must be in [0, 1], got {p}")
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=device) < p


def drop_captions(
    features: torch.Tensor,
    mask: torch.Tensor,
    null_features: torch.Tensor,
    null_mask: torch.Tensor,
    drop: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace captions (features (B, L, C), mask (B, L)) by the null caption ((1, L, C), (1, L)) where
    ``drop`` (B,) is True (see ``dropout_draws``)."""
    if null_features.shape[-2:] != features.shape[-2:] or null_mask.shape[-1] != mask.shape[-1]:
        raise ValueError(
            f"null caption {tuple(null_features.shape)} does not match captions {tuple(features.shape)}: "
            "remake the null-caption embedding at the captions' max length"
        )
    if drop.shape != (features.shape[0],):
        raise ValueError(f"drop has shape {tuple(drop.shape)}, expected ({features.shape[0]},)")
    drop = drop.to(device=features.device, dtype=torch.bool)
    features = torch.where(drop[:, None, None], null_features.to(features), features)
    mask = torch.where(drop[:, None], null_mask.to(mask), mask)
    return features, mask


def mix_captions(dense: torch.Tensor, dense_mask: torch.Tensor, raw: torch.Tensor, raw_mask: torch.Tensor,
                 use_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the raw caption ((B, L_raw, C), (B, L_raw)) where ``use_raw`` (B,) is True, else the
    dense one ((B, L, C), (B, L)); both are zero-padded to the longer length first (padding is masked)."""
    length = max(dense.shape[1], raw.shape[1])

    def padded(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = length - text.shape[1]
        return torch.nn.functional.pad(text, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))

    (dense, dense_mask), (raw, raw_mask) = padded(dense, dense_mask), padded(raw, raw_mask)
    use_raw = use_raw.to(device=dense.device, dtype=torch.bool)
    return torch.where(use_raw[:, None, None], raw, dense), torch.where(use_raw[:, None], raw_mask, dense_mask)
