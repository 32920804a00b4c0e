"""VAE, text encoder, tokenizer and null-caption builders of the tiny / debug profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixart.models.builders import (
    TINY_VAE_CONFIGS,
    build_text_encoder,
    build_vae,
    encode_captions,
    load_tokenizer,
    null_caption_embedding,
    train_tokenizer,
)
from pixart.models.specs import get_spec
from tests.helpers_models import CAPTIONS


@torch.no_grad()
def test_tiny_vaes_downsample_4x_to_4_channels_with_their_scaling_factor() -> None:
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    widths = set()
    for name, factor in (("old", 0.18215), ("new", 0.13025)):
        vae = build_vae(TINY_VAE_CONFIGS[name]).eval()
        latents = vae.encode(images).latent_dist.mean
        assert latents.shape == (1, 4, 64, 64)
        assert vae.config.scaling_factor == factor
        widths.add(tuple(vae.config.block_out_channels))
    assert len(widths) == 2


def test_seeded_builders_are_reproducible() -> None:
    a, b = build_vae(TINY_VAE_CONFIGS["old"], seed=3), build_vae(TINY_VAE_CONFIGS["old"], seed=3)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    spec = get_spec("tiny")
    c, d = build_text_encoder(spec, vocab_size=40, seed=1), build_text_encoder(spec, vocab_size=40, seed=1)
    assert c.config.d_model == spec.caption_channels
    assert all(
        torch.equal(x, y) for x, y in zip(c.state_dict().values(), d.state_dict().values(), strict=True)
    )


def test_text_encoder_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local path"):
        build_text_encoder(get_spec("xl"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_text_encoder(tmp_path)


def test_trained_tokenizer_reloads_with_same_ids(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(CAPTIONS, tmp_path / "tok", vocab_size=48)
    reloaded = load_tokenizer(tmp_path / "tok")
    assert reloaded(CAPTIONS).input_ids == tokenizer(CAPTIONS).input_ids
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)  # T5's layout


@pytest.mark.parametrize("max_tokens", [120, 300])
def test_null_caption_is_the_pipelines_negative_prompt(tmp_path: Path, max_tokens: int) -> None:
    from diffusers import PixArtSigmaPipeline

    spec = get_spec("debug")
    tokenizer = train_tokenizer(CAPTIONS, tmp_path / "tok", vocab_size=48)
    encoder = build_text_encoder(spec, vocab_size=len(tokenizer))
    null, null_mask = null_caption_embedding(encoder, tokenizer, max_tokens)
    assert null.shape == (1, max_tokens, spec.caption_channels)
    assert null_mask.sum() == 1  # only the EOS token
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=None, transformer=None, scheduler=None
    )
    _, _, negative, negative_mask = pipe.encode_prompt(
        "a red circle", negative_prompt="", clean_caption=False, max_sequence_length=max_tokens, device="cpu"
    )
    assert torch.equal(null, negative) and torch.equal(null_mask, negative_mask)
    features, mask = encode_captions(encoder, tokenizer, CAPTIONS[:3], max_tokens)
    assert features.shape == (3, max_tokens, spec.caption_channels) and (mask.sum(1) > 1).all()
