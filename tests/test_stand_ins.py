"""The stand-ins of xl's pretrained parts load through the loaders xl's stages use, from xl's paths,
and the same seed writes the same bytes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from pixart.models import stand_ins
from pixart.models.stand_ins import write_stand_ins
from pixart.settings import get_settings

PROFILE = "xl-rehearsal"  # xl with its sizes shrunk: the profile the stand-ins are for


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root whose pretrained/ holds the stand-ins, as `pixart pretrained stand-ins pretrained`
    leaves it; written once (the Inception file alone is ~95 MB)."""
    root = tmp_path_factory.mktemp("root")
    write_stand_ins(root / "pretrained")
    return root


def run_stage(module: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m stages.<module> --profile xl-rehearsal`` with ``root`` as the project root, in-process."""
    monkeypatch.setenv("PIXART_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", [module, "--profile", PROFILE])
    get_settings.cache_clear()
    try:
        importlib.import_module(f"stages.{module}").main()
    finally:
        get_settings.cache_clear()


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_vaes_stage_links_both_vae_stand_ins_as_8x_autoencoders_with_the_papers_scaling(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixart.config import load_profile
    from pixart.models.builders import build_vae
    from pixart.train.components import Components

    run_stage("vaes", root, monkeypatch)
    _, profile = load_profile(PROFILE)
    decoders = {}
    for name, scaling in (("old", 0.18215), ("new", 0.13025)):
        folder = root / "outputs" / f"vae-{name}"
        components = Components(vae=folder, text_encoder=root)
        assert components.vae_downsample() == 8 and components.scaling_factor() == scaling
        assert profile.vaes[name].scaling_factor == scaling
        vae = build_vae(folder).eval()  # as the features stage loads it
        assert vae.config.mid_block_add_attention
        with torch.no_grad():
            latents = vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mode()
            assert latents.shape == (1, 4, 8, 8)
            assert vae.decode(latents).sample.shape == (1, 3, 64, 64)
        decoders[name] = vae.decoder.conv_out.weight
    assert not torch.equal(decoders["old"], decoders["new"]), "the two VAEs must be different models"


def test_the_text_encoder_stage_links_the_flat_t5_folder_into_both_subfolders(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixart.models.builders import build_text_encoder, encode_captions, load_tokenizer
    from pixart.models.specs import get_spec

    flat = root / "pretrained" / stand_ins.T5
    # one folder, as google/t5-v1_1-xxl downloads; transformers 5 writes no spiece.model
    expected = {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert set(files_of(flat)) == expected
    run_stage("text_encoder", root, monkeypatch)
    out = root / "outputs" / "text-encoder"
    encoder = build_text_encoder(out / "text_encoder")
    tokenizer = load_tokenizer(out / "tokenizer")
    assert encoder.config.d_model == get_spec(PROFILE).caption_channels
    # words of the built-in list are whole tokens; anything else still tokenizes
    assert tokenizer.tokenize("a red dog on the left") == ["▁a", "▁red", "▁dog", "▁on", "▁the", "▁left"]
    features, mask = encode_captions(
        encoder, tokenizer, ["a red dog on the left", "Quizzical zebras, 3!"], 300
    )
    assert features.shape == (2, 300, encoder.config.d_model) and torch.isfinite(features).all()
    assert mask.sum(1).tolist() == [7, len(tokenizer("Quizzical zebras, 3!").input_ids)]


def test_the_text_encoder_stage_takes_the_pipeline_layout_too_and_names_both_layouts_otherwise(
    root: Path, tmp_path: Path
) -> None:
    from pixart.models.builders import build_text_encoder, load_tokenizer
    from pixart.train.components import link_tree
    from stages.text_encoder import link_text_encoder

    pipeline = tmp_path / "PixArt-Sigma"
    for part in ("text_encoder", "tokenizer", "transformer"):
        link_tree(root / "pretrained" / stand_ins.T5, pipeline / part)
    link_text_encoder(pipeline, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["text_encoder", "tokenizer"]
    build_text_encoder(tmp_path / "out" / "text_encoder")
    load_tokenizer(tmp_path / "out" / "tokenizer")

    (tmp_path / "neither").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"neither: expected .*text_encoder/ and tokenizer/.* or a flat"
    ):
        link_text_encoder(tmp_path / "neither", tmp_path / "out2")


def test_the_import_stage_converts_the_pixart_alpha_stand_in_into_a_transformer_that_reads_the_t5(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixart.config import load_profile
    from pixart.models.builders import build_text_encoder, encode_captions, load_tokenizer
    from pixart.models.convert import OFFICIAL_EXTRAS, load_official, official_to_ours, ours_to_official
    from pixart.models.specs import get_spec
    from pixart.train.components import Components
    from pixart.train.job import StageJob
    from pixart.train.weak_input import load_transformer

    name, profile = load_profile(PROFILE)
    stage = profile.stages["base"]
    assert stage.kind == "import" and stage.pretrained == Path("pretrained") / stand_ins.PIXART_ALPHA
    monkeypatch.setenv("PIXART_ROOT", str(root))  # the stage's relative path resolves against the project root
    get_settings.cache_clear()
    components = Components(vae=root / "pretrained" / stand_ins.SD_VAE, text_encoder=root)
    job = StageJob(
        name="base",
        profile_name=name,
        profile=profile,
        stage=stage,
        features=root,
        out_dir=root,
        components=components,
        state_dir=root,
        data_version="test",
    )
    model = load_transformer(job, components).eval()

    spec = get_spec(profile.model)
    assert model.config.num_layers == spec.depth and model.config.kv_compress_layers == []  # alpha: none
    official = torch.load(root / stage.pretrained, map_location="cpu", weights_only=True)
    assert list(official) == ["state_dict"] and set(OFFICIAL_EXTRAS) <= set(official["state_dict"])
    back = ours_to_official(model.state_dict(), official_to_ours(load_official(root / stage.pretrained))[1])
    assert back.keys() == official["state_dict"].keys()
    assert all(torch.equal(back[k], v) for k, v in official["state_dict"].items())

    t5 = root / "pretrained" / stand_ins.T5
    text, mask = encode_captions(build_text_encoder(t5), load_tokenizer(t5), ["a red dog"], stage.max_tokens)
    side = model.config.sample_size
    with torch.no_grad():
        out = model(
            torch.randn(1, 4, side, side),
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
            timestep=torch.tensor([500]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )
    assert out.sample.shape == (1, 8, side, side) and torch.isfinite(out.sample).all()


def test_the_inception_stand_in_loads_strictly_in_pytorch_fids_layout_with_spread_features(
    root: Path,
) -> None:
    from pixart.eval.backbones import build_backbone
    from pixart.eval.inception import FIDInceptionV3

    path = root / "pretrained" / stand_ins.INCEPTION
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert type(state) is dict and list(state) == list(FIDInceptionV3().state_dict())
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in state.items() if k.endswith("running_var"))
    backbone = build_backbone("inception-v3", path, "cpu")  # strict=True inside
    images = torch.stack([torch.zeros(3, 64, 64), torch.ones(3, 64, 64)])
    features = backbone.features(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    # neither vanished nor exploded through the 90-odd layers, and different images differ
    assert 1e-2 < features.abs().mean() < 1e2 and not torch.allclose(features[0], features[1])


def test_clip_score_runs_on_the_clip_stand_in(root: Path) -> None:
    from pixart.eval.clip_score import ClipScorer, clip_score

    scorer = ClipScorer(root / "pretrained" / stand_ins.CLIP)
    assert (
        scorer.model.config.vision_config.image_size == 224
        and scorer.model.config.vision_config.patch_size == 14
    )
    assert scorer.processor.tokenizer.tokenize("a red dog") == ["a</w>", "red</w>", "dog</w>"]
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    scores = scorer.scores(images, ["a red dog on the left", "Quizzical zebras, 3!"])
    assert scores.shape == (2,) and bool(((scores >= 0) & (scores <= 1)).all())
    assert 0 <= clip_score(images, ["a red dog", "a blue cat"], scorer) <= 1


def test_the_cli_writes_the_same_bytes_for_the_same_seed(root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixart.cli import app

    result = CliRunner().invoke(app, ["pretrained", "stand-ins", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    expected = {
        stand_ins.SD_VAE,
        stand_ins.SDXL_VAE,
        stand_ins.T5,
        stand_ins.PIXART_ALPHA,
        stand_ins.INCEPTION,
        stand_ins.CLIP,
        stand_ins.VLM,
    }
    assert {p.name for p in (tmp_path / "again").iterdir()} == expected
    first, again = files_of(root / "pretrained"), files_of(tmp_path / "again")
    assert first.keys() == again.keys()
    assert [name for name in first if first[name] != again[name]] == []


def test_another_seed_writes_other_weights(tmp_path: Path) -> None:
    stand_ins.write_vae(tmp_path / "0", seed=0)
    stand_ins.write_vae(tmp_path / "1", seed=1)
    weights = "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "0" / weights).read_bytes() != (tmp_path / "1" / weights).read_bytes()


def test_the_cli_refuses_a_t5_width_the_checkpoint_cannot_read(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixart.cli import app
    from pixart.models.specs import get_spec

    width = get_spec(PROFILE).caption_channels + 1
    result = CliRunner().invoke(
        app, ["pretrained", "stand-ins", str(tmp_path), "--caption-channels", str(width)]
    )
    assert result.exit_code == 2 and "caption_channels" in result.output
    assert not any(tmp_path.iterdir())
