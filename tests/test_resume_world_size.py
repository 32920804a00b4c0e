"""A resume on another world size is refused with both sizes named: ZeRO partitions the optimizer
states by rank, so a checkpoint saved by N processes cannot be read by M."""

import json

import pytest

from pixart import tracking
from pixart.config import load_profile
from pixart.settings import Settings
from pixart.train.checkpoint import ResumeError
from pixart.train.job import StageJob
from pixart.train.trainer import train
from tests.helpers_models import teacher_world


def test_resume_on_another_world_size_is_refused_naming_both(tmp_path):
    tracking.configure(Settings(root=tmp_path))
    teacher, components, features = teacher_world(tmp_path)
    name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={"save_every": 2, "log_every": 1})})
    stage = profile.stages["aes-1024"].model_copy(update={"steps": 3})
    job = StageJob(name="aes-1024", profile_name=name, profile=profile, stage=stage, features=features,
                   components=components, out_dir=tmp_path / "outputs/aes-1024", state_dir=tmp_path / "state",
                   data_version="test", weak_input=teacher)
    train(job)
    pointer = tmp_path / "state/latest.json"
    saved = json.loads(pointer.read_text())
    assert saved["world_size"] == 1
    pointer.write_text(json.dumps({**saved, "world_size": 8}))  # as a run on 8 GPUs would have left it
    with pytest.raises(ResumeError, match="saved by 8 processes, this run has 1"):
        train(job)
