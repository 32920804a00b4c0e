from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pixart.cli import app
from pixart.config import PARAMS_FILE, ParamsError, load_all, load_profile
from pixart.settings import Settings

PAPER_STAGES = ["base", "vae-adapt", "align", "aes-512", "aes-1024", "kv-1024", "aes-2k", "kv-2k",
                "aes-4k", "kv-4k", "dmd", "lcm"]


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    mutate(raw)
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def test_every_profile_in_params_yaml_validates():
    profiles = load_all()
    assert {"tiny", "xl", "smoke"} <= set(profiles)
    assert list(profiles["xl"].stages) == PAPER_STAGES


def test_xl_holds_the_paper_stage_table():
    _, xl = load_profile("xl")
    s = xl.stages
    assert (s["vae-adapt"].steps, s["vae-adapt"].batch_size, s["vae-adapt"].lr) == (8000, 1024, 2e-5)
    assert (s["aes-1024"].resolution, s["aes-1024"].batch_size, s["aes-1024"].lr) == (1024, 384, 1e-5)
    assert s["kv-1024"].kv_compress_layers == list(range(14, 28))
    assert s["align"].max_tokens == 300 and s["base"].max_tokens == 120
    assert xl.vaes["new"].scaling_factor == 0.13025
    # PixArt-LCM's config at Table 4's 512 px: batch 16 x 2 GPUs, lr 2e-5 x sqrt(32 / 256), Huber c 0.001
    lcm = s["lcm"]
    assert (lcm.init_from, lcm.resolution, lcm.batch_size, lcm.num_gpus, lcm.warmup_steps) == ("aes-512", 512, 32, 2, 100)
    assert lcm.lr == pytest.approx(2e-5 * (32 / 256) ** 0.5, rel=1e-3)
    assert (lcm.lcm.num_ddim_timesteps, lcm.lcm.w, lcm.lcm.loss, lcm.lcm.huber_c, lcm.lcm.target_decay) == \
        (50, 4.5, "huber", 0.001, 0.95)
    # the official configs' caption mix on every dense-caption training stage; raw-caption stages have none
    assert {n for n, st in s.items() if st.real_prompt_ratio == 0.5} == {
        "align", "aes-512", "aes-1024", "kv-1024", "aes-2k", "kv-2k", "aes-4k", "kv-4k"}
    assert xl.recaption.captioner == "vlm" and xl.recaption.caption_source == "recaption"


def test_a_caption_mix_on_a_raw_caption_stage_is_refused_by_name(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["tiny"]["stages"]["base"].update(real_prompt_ratio=0.5))
    with pytest.raises(ParamsError, match=r"stages\.base.*real_prompt_ratio.*caption 'dense' only"):
        load_profile("tiny", bad)


def test_a_vlm_captioner_needs_a_model_and_a_scene_reader_needs_scenes(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["tiny"]["recaption"].update(captioner="vlm"))
    with pytest.raises(ParamsError, match=r"recaption.*needs model_path"):
        load_profile("tiny", bad)
    bad = _write(tmp_path, lambda raw: raw["profiles"]["xl"]["recaption"].update(captioner="scene"))
    with pytest.raises(ParamsError, match=r"recaption.captioner: 'scene' reads generated scenes only"):
        load_profile("xl", bad)


def test_typo_in_a_stage_key_names_the_field_and_file(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["tiny"]["stages"]["align"].update(stpes=3))
    with pytest.raises(ParamsError) as err:
        load_profile("tiny", bad)
    assert "profiles.tiny.stages.align.stpes" in str(err.value)
    assert str(bad) in str(err.value)


def test_typo_in_an_extending_profile_is_caught_too(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["smoke"]["stages"]["base"].update(lr_rate=1))
    with pytest.raises(ParamsError, match=r"profiles\.smoke\.stages\.base\.lr_rate"):
        load_profile("smoke", bad)


def test_weak_input_must_be_an_earlier_stage(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["tiny"]["stages"]["base"].update(init_from="align"))
    with pytest.raises(ParamsError, match=r"stages\.base\.init_from"):
        load_profile("tiny", bad)


def test_a_vae_no_stage_uses_is_refused_by_name(tmp_path):
    # it used to reach the vaes stage and die in numpy ("a cannot be empty") with no VAE named
    bad = _write(tmp_path, lambda raw: raw["profiles"]["tiny"]["vaes"].update(spare={"config": "new", "steps": 1}))
    with pytest.raises(ParamsError, match=r"vaes: \['spare'\] not used by any stage"):
        load_profile("tiny", bad)


def test_smoke_extends_tiny_and_overrides_only_what_it_names():
    _, tiny = load_profile("tiny")
    _, smoke = load_profile("smoke")
    assert smoke.stages["align"].steps == 2
    assert smoke.stages["align"].caption == tiny.stages["align"].caption == "dense"
    assert list(smoke.stages) == list(tiny.stages)


def test_generated_data_must_cover_the_largest_stage(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["tiny"]["data"]["generator"].update(resolution_px=64))
    with pytest.raises(ParamsError, match="upsampled"):
        load_profile("tiny", bad)


def test_cli_config_show_prints_every_xl_stage():
    result = CliRunner().invoke(app, ["config", "show", "--profile", "xl"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for stage in PAPER_STAGES:
        assert stage in result.output
    assert "80000" in result.output


def test_cli_config_show_reports_a_bad_file_with_exit_2(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["tiny"]["stages"]["base"].update(stpes=1))
    result = CliRunner().invoke(app, ["config", "show", "--params", str(bad)])
    assert result.exit_code == 2
    assert "stages.base.stpes" in result.output


def test_settings_show_prints_every_setting():
    result = CliRunner().invoke(app, ["settings", "show"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in Settings.model_fields:
        assert name in result.output


def test_stage_defaults_fill_every_stage_and_a_stage_key_overrides_them():
    _, xl = load_profile("xl")
    assert {s.vae for n, s in xl.stages.items() if n != "base"} == {"new"} and xl.stages["base"].vae == "old"
    assert xl.stages["align"].lr == 2e-5 and xl.stages["aes-1024"].lr == 1e-5
    # the LCM row keeps the official recipe's 2 GPUs (its global batch and lr rule depend on them)
    assert {s.num_gpus for n, s in xl.stages.items() if n != "lcm"} == {8} and xl.stages["lcm"].num_gpus == 2
    _, rehearsal = load_profile("xl-rehearsal")
    assert {s.num_gpus for s in rehearsal.stages.values()} == {2}  # its stage_defaults merge into xl's
    assert rehearsal.stages["aes-1024"].lr == 1e-5


def test_xl_rehearsal_changes_only_sizes_of_xl():
    _, xl = load_profile("xl")
    _, rehearsal = load_profile("xl-rehearsal")
    assert rehearsal.train.model_dump(exclude={"log_every", "save_every"}) == xl.train.model_dump(
        exclude={"log_every", "save_every"})
    assert rehearsal.data.model_dump(exclude={"n_heldout"}) == xl.data.model_dump(exclude={"n_heldout"})
    assert (rehearsal.vaes, rehearsal.text_encoder) == (xl.vaes, xl.text_encoder)
    sizes = {"steps", "batch_size", "num_gpus", "dmd"}
    for name, stage in xl.stages.items():
        assert rehearsal.stages[name].model_dump(exclude=sizes) == stage.model_dump(exclude=sizes), name
    assert rehearsal.pixeval.model_dump(exclude={"n_prompts"}) == xl.pixeval.model_dump(exclude={"n_prompts"})


def test_zero3_is_refused_naming_the_field(tmp_path):
    bad = _write(tmp_path, lambda raw: raw["profiles"]["xl"]["train"].update(zero_stage=3))
    with pytest.raises(ParamsError) as err:
        load_profile("xl", bad)
    assert "profiles.xl.train.zero_stage" in str(err.value) and "EMA" in str(err.value)
