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
    packaged_model_path,
    packaged_text_encoder,
    text_encoder_classes,
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


def test_tiny_vaes_have_no_attention_so_no_latent_position_steers_the_whole_image() -> None:
    # trained with a mid-block attention, the new VAE kept the image's colour in the latents' last
    # columns, which no diffusion model draws exactly (builders.py has the numbers)
    from diffusers.models.attention_processor import Attention

    for name in ("old", "new"):
        assert not any(isinstance(m, Attention) for m in build_vae(TINY_VAE_CONFIGS[name]).modules()), name


def test_seeded_builders_are_reproducible() -> None:
    a, b = build_vae(TINY_VAE_CONFIGS["old"], seed=3), build_vae(TINY_VAE_CONFIGS["old"], seed=3)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    spec = get_spec("debug")
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


def test_the_packaged_minilm_is_the_tiny_specs_encoder_and_its_null_caption_is_the_pipelines() -> None:
    from diffusers import PixArtSigmaPipeline

    from pixart.config import load_profile

    package = load_profile("tiny")[1].text_encoder.package
    assert text_encoder_classes(packaged_model_path(package)) == ("BertModel", "BertTokenizerFast")
    encoder, tokenizer = packaged_text_encoder(package)
    assert encoder.config.hidden_size == get_spec("tiny").caption_channels
    null, null_mask = null_caption_embedding(encoder, tokenizer, 300)
    assert null_mask.sum() == 2  # [CLS] [SEP]
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, transformer=None, scheduler=None)
    _, _, negative, negative_mask = pipe.encode_prompt(
        "a red circle", negative_prompt="", clean_caption=False, max_sequence_length=300, device="cpu"
    )
    assert torch.equal(null, negative) and torch.equal(null_mask, negative_mask)
    # a pretrained encoder tells colours apart: "red" and "blue" captions differ where the word is
    features, _ = encode_captions(encoder, tokenizer, ["a red circle", "a blue circle"], 300)
    assert (features[0, 2] - features[1, 2]).norm() > 0.1 * features[0, 2].norm()


@pytest.mark.parametrize("encoder_kind", ["debug-t5", "minilm"])
def test_padding_to_the_longest_caption_keeps_every_real_tokens_features(tmp_path: Path, encoder_kind: str) -> None:
    if encoder_kind == "minilm":
        from pixart.config import load_profile

        encoder, tokenizer = packaged_text_encoder(load_profile("tiny")[1].text_encoder.package)
    else:
        tokenizer = train_tokenizer(CAPTIONS, tmp_path / "tok", vocab_size=48)
        encoder = build_text_encoder(get_spec("debug"), vocab_size=len(tokenizer))
    captions = [CAPTIONS[0], CAPTIONS[1] + " " + CAPTIONS[2], "a"]
    full, full_mask = encode_captions(encoder, tokenizer, captions, 300)
    short, short_mask = encode_captions(encoder, tokenizer, captions, 300, pad_to_max=False)
    longest = int(full_mask.sum(1).max())
    assert short.shape[1] == longest < 300
    assert torch.equal(short_mask, full_mask[:, :longest])
    real = short_mask.bool()
    torch.testing.assert_close(short[real], full[:, :longest][real], rtol=1e-4, atol=1e-5)


def test_a_package_without_a_model_folder_is_named_in_the_error() -> None:
    with pytest.raises(ImportError, match="'no_such_package_xyz' is not installed"):
        packaged_model_path("no_such_package_xyz")
    with pytest.raises(ValueError, match="'json' has no get_model_path"):
        packaged_model_path("json")


def test_an_unknown_encoder_type_is_refused_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="model_type 'gpt2' is not a supported text encoder"):
        text_encoder_classes(tmp_path)
