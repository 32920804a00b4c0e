"""The DMD stage end to end on a hand-built debug world (``teacher_world``): teacher pairs, train_dmd
(with a resumable save), and a one-step pipeline folder that the one-step sampler renders."""

import json

import torch

from pixart import tracking
from pixart.config import load_profile
from pixart.diffusion.one_step import one_step_t_gen, sample_one_step
from pixart.settings import Settings
from pixart.train.dmd import train_dmd
from pixart.train.dmd_pairs import TeacherPairs, make_teacher_pairs
from pixart.train.job import StageJob
from tests.helpers_models import DEBUG_IMAGE_SIDE, teacher_world


def test_dmd_stage_exports_a_one_step_pipeline(tmp_path):
    tracking.configure(Settings(root=tmp_path))
    teacher, components, features = teacher_world(tmp_path)
    pairs = make_teacher_pairs(teacher, features, tmp_path / "outputs/dmd-pairs", pairs=6, steps=2, cfg=4.5)
    stored = TeacherPairs(pairs)
    assert len(stored) == 6 and stored.batch(torch.tensor([5]))["index"].tolist() == [5]

    name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={"save_every": 2, "log_every": 1})})
    stage = profile.stages["dmd"].model_copy(update={"steps": 3})
    job = StageJob(name="dmd", profile_name=name, profile=profile, stage=stage, features=features,
                   components=components, out_dir=tmp_path / "outputs/dmd", state_dir=tmp_path / "state",
                   data_version="test", weak_input=teacher)
    out = train_dmd(job, pairs)

    assert sorted(p.name for p in (tmp_path / "state/fake-score").glob("step-*")) == ["step-00000002", "step-00000003"]
    info = json.loads((out / "stage.json").read_text())
    assert info["parent"] == "aes-512" and info["model_version"]
    described = tracking.client._ctx().client.get_model_version("pixart-sigma", info["model_version"]).description
    assert described.startswith("dmd: ") and "weak input aes-512" in described
    assert one_step_t_gen(out) == 400 and one_step_t_gen(teacher) is None
    images = sample_one_step(out, ["a small red circle on the left"], t_gen=400, height=DEBUG_IMAGE_SIDE,
                             width=DEBUG_IMAGE_SIDE, max_tokens=16)
    assert images[0].size == (DEBUG_IMAGE_SIDE, DEBUG_IMAGE_SIDE)
