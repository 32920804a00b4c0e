"""Official PixArt-sigma state dicts <-> ours: exact round trip, KV compression keys included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pixart.models.convert import official_to_ours, ours_to_official, save_official
from pixart.models.specs import get_spec
from pixart.models.transformer import build_transformer


def official_debug_state_dict(kv_layers: tuple[int, ...] = (1,)) -> dict[str, torch.Tensor]:
    """Random tensors with the official PixArtMS keys and shapes for the debug spec."""
    spec = get_spec("debug")
    c, p, cap, depth = spec.hidden_size, spec.patch_size, spec.caption_channels, spec.depth
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, 16, c),
        "x_embedder.proj.weight": (c, 4, p, p), "x_embedder.proj.bias": (c,),
        "t_embedder.mlp.0.weight": (c, 256), "t_embedder.mlp.0.bias": (c,),
        "t_embedder.mlp.2.weight": (c, c), "t_embedder.mlp.2.bias": (c,),
        "t_block.1.weight": (6 * c, c), "t_block.1.bias": (6 * c,),
        "y_embedder.y_embedding": (120, cap),
        "y_embedder.y_proj.fc1.weight": (c, cap), "y_embedder.y_proj.fc1.bias": (c,),
        "y_embedder.y_proj.fc2.weight": (c, c), "y_embedder.y_proj.fc2.bias": (c,),
        "final_layer.linear.weight": (p * p * 8, c), "final_layer.linear.bias": (p * p * 8,),
        "final_layer.scale_shift_table": (2, c),
    }  # fmt: skip
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {
            b + "scale_shift_table": (6, c),
            b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,),
            b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
            b + "cross_attn.q_linear.weight": (c, c), b + "cross_attn.q_linear.bias": (c,),
            b + "cross_attn.kv_linear.weight": (2 * c, c), b + "cross_attn.kv_linear.bias": (2 * c,),
            b + "cross_attn.proj.weight": (c, c), b + "cross_attn.proj.bias": (c,),
            b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,),
            b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,),
        }  # fmt: skip
        if i in kv_layers:
            shapes |= {
                b + "attn.sr.weight": (c, 1, 2, 2), b + "attn.sr.bias": (c,),
                b + "attn.norm.weight": (c,), b + "attn.norm.bias": (c,),
            }  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_official_to_ours_to_official_is_exact_and_loads_into_our_transformer() -> None:
    official = official_debug_state_dict()
    ours, extras = official_to_ours(official)
    assert set(extras) == {"pos_embed", "y_embedder.y_embedding"}
    model = build_transformer(
        get_spec("debug"), sample_size=8, interpolation_scale=0.5, kv_compress_layers=[1]
    )
    model.load_state_dict(ours, strict=True)
    processor = model.kv_compress_processors()[1]
    assert torch.equal(processor.conv.weight, official["blocks.1.attn.sr.weight"])
    assert torch.equal(
        model.transformer_blocks[0].attn1.to_v.weight, official["blocks.0.attn.qkv.weight"][32:]
    )
    assert torch.equal(
        model.transformer_blocks[0].attn2.to_k.weight, official["blocks.0.cross_attn.kv_linear.weight"][:16]
    )
    assert_same(ours_to_official(model.state_dict(), extras), official)


def test_cli_round_trip_through_a_saved_transformer_is_exact(tmp_path: Path) -> None:
    from pixart.cli import app
    from pixart.models.convert import load_official

    official = official_debug_state_dict()
    save_official(official, tmp_path / "official.pth")
    runner = CliRunner()
    result = runner.invoke(app, ["convert", "--from-official", str(tmp_path / "official.pth"), "--to",
                                 str(tmp_path / "ours"), "--spec", "debug", "--resolution", "256", "--vae-factor", "32"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[1]" in result.output
    result = runner.invoke(
        app, ["convert", "--to-official", str(tmp_path / "ours"), "--out", str(tmp_path / "back.pth")]
    )
    assert result.exit_code == 0, result.output
    assert_same(load_official(tmp_path / "back.pth"), official)


def test_micro_condition_keys_are_rejected() -> None:
    official = official_debug_state_dict() | {"csize_embedder.mlp.0.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match="csize_embedder"):
        official_to_ours(official)


def test_an_import_stage_starts_from_the_official_weights_at_its_resolution(tmp_path: Path) -> None:
    """xl's base: an official .pth becomes the stage's transformer, exact, KV layers included."""
    import json

    from pixart.config import StageConfig, load_profile
    from pixart.train.components import Components
    from pixart.train.job import StageJob
    from pixart.train.weak_input import load_transformer

    official = official_debug_state_dict()
    save_official(official, tmp_path / "alpha.pth")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae/config.json").write_text(json.dumps({"block_out_channels": [8, 8, 8, 8]}))  # x8
    name, smoke = load_profile("smoke")
    stage = StageConfig(kind="import", pretrained=tmp_path / "alpha.pth", resolution=256, caption="raw",
                        max_tokens=120, vae="old")
    job = StageJob(name="base", profile_name=name, profile=smoke, stage=stage, features=tmp_path, out_dir=tmp_path,
                   components=Components(vae=tmp_path / "vae", text_encoder=tmp_path), state_dir=tmp_path,
                   data_version="test")
    model = load_transformer(job, job.components)
    assert model.config.sample_size == smoke.pixels(stage) // 8 and model.config.kv_compress_layers == [1]
    assert_same(ours_to_official(model.state_dict(), official_to_ours(official)[1]), official)
