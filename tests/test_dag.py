"""dvc.yaml is rendered from params.yaml: every profile's table is its DAG, and drift is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from pixart import dag, paths
from pixart.config import PARAMS_FILE, load_all
from pixart.rendered import Drift
from tests.conftest import subprocess_env

PROFILES = sorted(load_all())


def test_committed_dvc_yaml_is_the_rendering_of_params_yaml():
    dag.check(PARAMS_FILE)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_renders_a_dag_dvc_accepts_with_every_stage_of_its_table(tmp_path, profile):
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS_FILE, params)
    dag.set_active_profile(params, profile)
    dag.write(params)
    dag.check(params)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    parsed = load_all(params)[profile]
    table = parsed.stages
    assert set(table) <= set(stages)
    for name, stage in table.items():
        assert f"outputs/{name}" in stages[name]["outs"]
        assert f"outputs/{name}" in stages["pixeval"]["deps"]
        if stage.init_from:
            assert f"outputs/{stage.init_from}" in stages[name]["deps"], name
        if stage.kind == "import":  # no features: what it exports comes straight from its upstream
            assert not any(d.startswith("features/") for d in stages[name]["deps"]), name
            assert {"data/train", "outputs/text-encoder", f"outputs/vae-{stage.vae}"} <= set(stages[name]["deps"])
        else:
            feature_set = paths.feature_set(parsed, name)
            assert f"features/{feature_set}" in stages[name]["deps"], name
            assert stages[f"features-{feature_set}"]["outs"] == [f"features/{feature_set}"]
    assert {n for n in stages if n.startswith("features-")} == {f"features-{s}" for s in paths.feature_sets(parsed)}
    # DVC's run cache restores a stage in a fresh clone only when no out persists or skips the cache
    for name, stage in stages.items():
        for out in (o for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])):
            options = next(iter(out.values())) if isinstance(out, dict) else {}
            assert not options.get("persist") and options.get("cache", True), (name, out)
    # DVC itself parses it: every stage, dependency and params key it names exists
    env = subprocess_env()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=tmp_path, env=env, check=False,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines() if line.strip()} == set(stages)


def test_xl_dag_holds_both_4k_rows_and_reads_the_users_data():
    params = PARAMS_FILE.parent / "params.yaml"
    raw = dag._stages("xl", load_all(params)["xl"], dag._Keys(yaml.safe_load(params.read_text())["profiles"], "xl"))
    assert {"aes-4k", "kv-4k"} <= set(raw)
    assert raw["kv-4k"]["deps"][-1] == "outputs/kv-2k"
    assert "data/source" in raw["prepare-data"]["deps"]
    assert "outputs/judge" not in str(raw["pixeval"]["outs"])  # no judge without generated scenes
    assert "pretrained/PixArt-XL-2-256x256.pth" in raw["base"]["deps"]
    assert "profiles.xl.stage_defaults" in raw["align"]["params"]
    # every feature set and the teacher pairs shard over the GPUs of the stages they serve, and their pods get as many
    assert raw["features-aes-1024"]["cmd"] == "python -m pixart launch --num-gpus 8 stages.features aes-1024"
    assert dag.sharded_gpus(load_all(params)["xl"]) == {**{f"features-{s}": 8 for s in (
        "vae-adapt", "align", "aes-512", "aes-1024", "aes-2k", "aes-4k")}, "dmd-pairs": 8, "recaption": 8}


def test_a_feature_set_depends_on_the_params_that_enter_its_key_only():
    params = PARAMS_FILE.parent / "params.yaml"
    raw = dag._stages("smoke", load_all(params)["smoke"],
                      dag._Keys(yaml.safe_load(params.read_text())["profiles"], "smoke"))
    assert raw["features-base"]["params"] == [
        "profile", "profiles.tiny.stages.base.vae", "profiles.tiny.stages.base.resolution",
        "profiles.tiny.stages.base.caption", "profiles.tiny.stages.base.max_tokens",
        "profiles.tiny.pixel_scale", "profiles.smoke.pixel_scale", "profiles.tiny.bucket_quantum_px",
        "profiles.smoke.bucket_quantum_px", "profiles.tiny.train.precision"]
    assert "outputs/vae-old" in raw["features-base"]["deps"] and "outputs/vae-new" not in raw["features-base"]["deps"]
    # kv-1024 reads aes-1024's set, which also names the images and quality it keeps
    assert "features/aes-1024" in raw["kv-1024"]["deps"] and "features-kv-1024" not in raw
    assert {"profiles.tiny.stages.aes-1024.images", "profiles.tiny.stages.aes-1024.quality",
            "profiles.tiny.stages.aes-1024.multi_aspect"} <= set(raw["features-aes-1024"]["params"])


def test_a_hand_edit_of_dvc_yaml_fails_the_check_and_the_cli(tmp_path):
    from typer.testing import CliRunner

    from pixart.cli import app

    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS_FILE, params)
    dag.write(params)
    out = tmp_path / "dvc.yaml"
    out.write_text(out.read_text().replace("    - outputs/align\n", "", 1))
    with pytest.raises(Drift, match="pixart dag --write"):
        dag.check(params)
    result = CliRunner().invoke(app, ["dag", "--check", "--params", str(params)])
    assert result.exit_code == 1 and "outputs/align" in result.output
    assert CliRunner().invoke(app, ["dag", "--write", "--params", str(params)]).exit_code == 0
    dag.check(params)


def test_a_stage_under_dvc_refuses_a_dag_rendered_for_another_profile(tmp_path):
    from tests.conftest import copy_repo

    root = copy_repo(tmp_path, "smoke")
    dag.set_active_profile(root / "params.yaml", "tiny")  # switched without re-rendering
    env = {**subprocess_env(), "PIXART_ROOT": str(root), "DVC_STAGE": "caption-stats", "DVC_ROOT": str(root)}
    proc = subprocess.run([sys.executable, "-m", "stages.caption_stats"], cwd=root, env=env, capture_output=True, check=False,
                          text=True)
    assert proc.returncode != 0
    assert "caption-stats:" in proc.stderr and "pixart dag --write" in proc.stderr
    assert not (root / "metrics").exists()
