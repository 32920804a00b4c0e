"""The PixArt-Sigma transformer: specs, parameter count, KV compression, PE interpolation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pixart.models.kv_compress import KVCompressAttnProcessor
from pixart.models.specs import get_spec
from pixart.models.transformer import (
    PixArtSigmaTransformer,
    build_transformer,
    enable_kv_compression,
    pe_interpolation,
    set_resolution,
)
from tests.helpers_models import perturb


def official_param_count(depth: int, hidden: int, patch: int, caption: int, kv_layers: int) -> int:
    """Parameters of the official PixArtMS (no micro-conditions, no qk-norm), from its layer shapes."""
    c, p, freq = hidden, patch, 256

    def linear(i: int, o: int) -> int:
        return i * o + o

    x_embedder = 4 * p * p * c + c
    t_embedder = linear(freq, c) + linear(c, c)
    t_block = linear(c, 6 * c)
    y_embedder = linear(caption, c) + linear(c, c)  # y_embedding is a buffer, not a parameter
    block = (
        linear(c, 3 * c)
        + linear(c, c)  # attn.qkv, attn.proj
        + linear(c, c)
        + linear(c, 2 * c)
        + linear(c, c)  # cross_attn.q_linear, kv_linear, proj
        + linear(c, 4 * c)
        + linear(4 * c, c)  # mlp.fc1, fc2
        + 6 * c  # scale_shift_table
    )
    kv_compress = (c * 2 * 2 + c) + 2 * c  # attn.sr (depthwise 2x2), attn.norm
    final_layer = linear(c, p * p * 8) + 2 * c
    return (
        x_embedder + t_embedder + t_block + y_embedder + depth * block + kv_layers * kv_compress + final_layer
    )


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_get_spec_names_known_specs_on_error() -> None:
    with pytest.raises(KeyError, match="xl, xl-rehearsal, tiny, debug"):
        get_spec("XXL")


def test_xl_on_meta_has_official_param_count() -> None:
    spec = get_spec("xl")
    with torch.device("meta"):
        plain = build_transformer(spec, sample_size=128, interpolation_scale=pe_interpolation(1024))
        compressed = build_transformer(
            spec, sample_size=128, interpolation_scale=2.0, kv_compress_layers=spec.kv_compress_layers
        )
    assert count(plain) == official_param_count(28, 1152, 2, 4096, kv_layers=0) == 610_856_096
    assert count(compressed) == official_param_count(28, 1152, 2, 4096, kv_layers=14)


def hand_attention_with_pooled_kv(
    attn: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Self-attention with K and V 2x2 average-pooled on the token grid and layer-normed (no affine)."""
    b, n, c = x.shape
    heads = attn.heads
    d = c // heads

    def pool(t: torch.Tensor) -> torch.Tensor:
        t = t.transpose(1, 2).reshape(b, c, *grid)
        t = F.avg_pool2d(t, 2).flatten(2).transpose(1, 2)
        mean = t.mean(-1, keepdim=True)
        var = t.var(-1, unbiased=False, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-5)

    q = attn.to_q(x).view(b, n, heads, d).transpose(1, 2)
    k = pool(attn.to_k(x)).view(b, -1, heads, d).transpose(1, 2)
    v = pool(attn.to_v(x)).view(b, -1, heads, d).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    return attn.to_out[0](out)


@torch.no_grad()
def test_kv_compression_at_init_is_attention_over_average_pooled_layer_normed_kv() -> None:
    torch.manual_seed(0)
    spec = get_spec("debug")
    model = build_transformer(spec, sample_size=8, interpolation_scale=0.5, kv_compress_layers=[1])
    attn = model.transformer_blocks[1].attn1
    processor = attn.processor
    assert isinstance(processor, KVCompressAttnProcessor)
    grid = (4, 6)  # a non-square grid: rows and columns must not be swapped
    processor.token_grid = grid
    x = torch.randn(2, grid[0] * grid[1], spec.hidden_size)
    torch.testing.assert_close(attn(x), hand_attention_with_pooled_kv(attn, x, grid), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_forward_really_compresses_the_listed_layers() -> None:
    torch.manual_seed(0)
    spec = get_spec("debug")
    compressed = build_transformer(spec, sample_size=8, interpolation_scale=0.5, kv_compress_layers=[1])
    plain = build_transformer(spec, sample_size=8, interpolation_scale=0.5)
    plain.load_state_dict(compressed.state_dict(), strict=False)  # same weights, minus the processor
    args = {"encoder_hidden_states": torch.randn(1, 5, 16), "timestep": torch.tensor([10])}
    x = torch.randn(1, 4, 8, 12)
    assert not torch.allclose(compressed(x, **args).sample, plain(x, **args).sample)
    assert compressed.kv_compress_processors()[1].token_grid == (4, 6)


def test_odd_token_grid_raises_naming_the_grid() -> None:
    model = build_transformer(
        get_spec("debug"), sample_size=8, interpolation_scale=0.5, kv_compress_layers=[1]
    )
    with pytest.raises(ValueError, match="3x4"):
        model(
            torch.randn(1, 4, 6, 8), encoder_hidden_states=torch.randn(1, 5, 16), timestep=torch.tensor([10])
        )


def test_kv_layers_round_trip_through_save_and_from_pretrained(tmp_path: Path) -> None:
    model = build_transformer(
        get_spec("debug"), sample_size=8, interpolation_scale=0.5, kv_compress_layers=[1]
    )
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = PixArtSigmaTransformer.from_pretrained(tmp_path)
    assert loaded.config.kv_compress_layers == [1]
    assert set(loaded.kv_compress_processors()) == {1}
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_enabling_compression_on_uncompressed_checkpoint_gives_averaging_init(tmp_path: Path) -> None:
    spec = get_spec("debug")
    model = build_transformer(spec, sample_size=8, interpolation_scale=0.5)
    perturb(model)
    model.save_pretrained(tmp_path / "plain")
    loaded = PixArtSigmaTransformer.from_pretrained(tmp_path / "plain")
    assert loaded.kv_compress_processors() == {}
    enable_kv_compression(loaded, spec.kv_compress_layers)
    processor = loaded.kv_compress_processors()[1]
    assert torch.equal(processor.conv.weight, torch.full_like(processor.conv.weight, 0.25))
    assert torch.equal(processor.conv.bias, torch.zeros_like(processor.conv.bias))
    assert torch.equal(processor.norm.weight, torch.ones_like(processor.norm.weight))
    assert torch.equal(processor.norm.bias, torch.zeros_like(processor.norm.bias))
    old = model.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in loaded.state_dict().items() if "processor" not in k)
    assert loaded.config.kv_compress_layers == [1]
    loaded.save_pretrained(tmp_path / "kv")
    assert set(PixArtSigmaTransformer.from_pretrained(tmp_path / "kv").kv_compress_processors()) == {1}


def test_pe_interpolation_is_nominal_resolution_over_512() -> None:
    assert [pe_interpolation(r) for r in (256, 512, 1024, 2048)] == [0.5, 1.0, 2.0, 4.0]


@torch.no_grad()
def test_set_resolution_recomputes_pe_with_new_base_size_and_scale(tmp_path: Path) -> None:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    model = build_transformer(get_spec("debug"), sample_size=8, interpolation_scale=pe_interpolation(256))
    set_resolution(model, 16, pe_interpolation(512))
    assert (model.config.sample_size, model.config.interpolation_scale) == (16, 1.0)
    embed = model.pos_embed
    for grid in [(8, 8), (6, 10)]:
        x = torch.randn(1, 4, 2 * grid[0], 2 * grid[1])
        pe = embed(x) - embed.proj(x).flatten(2).transpose(1, 2)
        # the official PixArt PE: arange(n) / (n / base_size) / pe_interpolation with base_size = 16 / 2
        expected = get_2d_sincos_pos_embed(16, grid, base_size=8, interpolation_scale=1.0)
        torch.testing.assert_close(pe[0], expected.float(), rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = PixArtSigmaTransformer.from_pretrained(tmp_path)
    assert torch.equal(loaded.pos_embed.pos_embed, model.pos_embed.pos_embed)


def test_model_summary_prints_the_xl_parameter_count() -> None:
    from typer.testing import CliRunner

    from pixart.cli import app

    result = CliRunner().invoke(app, ["model", "summary", "--spec", "xl"])
    assert result.exit_code == 0, result.output
    assert f"{official_param_count(28, 1152, 2, 4096, kv_layers=0):,}" in result.output
    assert f"{official_param_count(28, 1152, 2, 4096, kv_layers=14):,}" in result.output
