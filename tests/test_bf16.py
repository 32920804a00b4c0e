"""bf16 under ZeRO-2 (xl's precision): the trainer, DMD and LCM feed the engine its own dtype, and a stage
exports fp32 weights (the EMA's), not a bf16 rounding of them."""

import pytest
import torch
from safetensors.torch import load_file

from pixart import tracking
from pixart.config import load_profile
from pixart.settings import Settings
from pixart.train.dmd import train_dmd
from pixart.train.dmd_pairs import make_teacher_pairs
from pixart.train.job import StageJob
from pixart.train.trainer import train
from tests.helpers_models import teacher_world

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def _job(tmp_path, name: str, teacher, components, features, **train_update) -> StageJob:
    profile_name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={
        "precision": "bf16", "zero_stage": 2, "log_every": 1, "save_every": 2, **train_update})})
    stage = profile.stages[name].model_copy(update={"steps": 3, "kv_compress_layers": []})
    return StageJob(name=name, profile_name=profile_name, profile=profile, stage=stage, features=features,
                    components=components, out_dir=tmp_path / f"outputs/{name}", state_dir=tmp_path / f"state/{name}",
                    data_version="test", weak_input=teacher)


@pytest.mark.parametrize("optimizer", ["adamw", "came"])
def test_bf16_zero2_stage_trains_and_exports_fp32_weights(tmp_path, optimizer):
    tracking.configure(Settings(root=tmp_path))
    teacher, components, features = teacher_world(tmp_path)
    out = train(_job(tmp_path, "aes-1024", teacher, components, features, optimizer=optimizer))
    before, after = load_file(teacher / WEIGHTS), load_file(out / WEIGHTS)
    assert {t.dtype for t in after.values()} == {torch.float32}
    # the EMA moved away from the weak input in fp32: not every change is a multiple of bf16's step
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert moved
    assert any(not torch.equal(after[k], after[k].bfloat16().float()) for k in moved)


def test_bf16_dmd_stage_trains_and_exports_fp32_weights(tmp_path):
    tracking.configure(Settings(root=tmp_path))
    teacher, components, features = teacher_world(tmp_path)
    pairs = make_teacher_pairs(teacher, features, tmp_path / "outputs/dmd-pairs", pairs=4, steps=2, cfg=4.5)
    out = train_dmd(_job(tmp_path, "dmd", teacher, components, features), pairs)
    assert {t.dtype for t in load_file(out / WEIGHTS).values()} == {torch.float32}


def test_bf16_lcm_stage_trains_and_exports_fp32_weights(tmp_path):
    from pixart.train.lcm import train_lcm

    tracking.configure(Settings(root=tmp_path))
    teacher, components, features = teacher_world(tmp_path)
    out = train_lcm(_job(tmp_path, "lcm", teacher, components, features))
    after = load_file(out / WEIGHTS)
    assert {t.dtype for t in after.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in after.values())
