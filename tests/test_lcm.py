"""LCM: the consistency target against a hand computation, one student step under DeepSpeed, and the
stage end to end: a pipeline folder with an LCMScheduler that diffusers loads and samples in 1, 2, 4 steps."""

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pixart import tracking
from pixart.config import LCMConfig, load_profile
from pixart.diffusion.lcm import SkippingStepDDIM, boundary_scalings
from pixart.diffusion.schedule import linear_schedule
from pixart.diffusion.stage_sampler import StageSampler
from pixart.settings import Settings
from pixart.train.job import StageJob
from pixart.train.lcm import consistency_target, lcm_draws, lcm_step, train_lcm
from tests.helpers_models import DEBUG_IMAGE_SIDE, DEBUG_LATENT_SIDE, debug_parts, perturb, teacher_world
from tests.test_dmd import _changed, _engine, _state

SHAPE = torch.Size((4, DEBUG_LATENT_SIDE, DEBUG_LATENT_SIDE))


class Toy(torch.nn.Module):
    """eps = a x_t + (mean of the real caption features), the variance channels zero: a denoiser whose
    conditional and unconditional (null caption = zeros) outputs differ by a known amount."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x, encoder_hidden_states, encoder_attention_mask, timestep, added_cond_kwargs):
        m = encoder_attention_mask.to(x.dtype)[..., None]
        c = (encoder_hidden_states * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1) / encoder_hidden_states.shape[-1]
        eps = self.a * x + c.view(-1, 1, 1, 1)
        return SimpleNamespace(sample=torch.cat([eps, torch.zeros_like(eps)], 1))


@pytest.mark.parametrize("n", [0, 1, 30, 49])
def test_consistency_target_is_one_guided_skipping_step_ddim_step(n):
    g = torch.Generator().manual_seed(n)
    x_t = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    text, mask = torch.full((1, 2, 4), 0.8, dtype=torch.float64), torch.ones(1, 2, dtype=torch.long)
    null = (torch.zeros(1, 1, 4, dtype=torch.float64), torch.ones(1, 1, dtype=torch.long))
    teacher, target, w = Toy(0.3), Toy(-0.2), 4.5
    got = consistency_target(teacher, target, SkippingStepDDIM(50), w, x_t, torch.tensor([n]), text, mask, null)

    # by hand: t_n = 20 (n + 1) - 1, one DDIM step to t_n - 20 with abar at the grid's previous point
    abar = linear_schedule().alphas_cumprod
    t, t_prev = 20 * (n + 1) - 1, max(20 * (n + 1) - 1 - 20, 0)
    a_t, a_prev = abar[t].item(), abar[t_prev if n > 0 else 0].item()
    eps_c, eps_u = 0.3 * x_t + 0.8, 0.3 * x_t
    x0_c, x0_u = ((x_t - math.sqrt(1 - a_t) * e) / math.sqrt(a_t) for e in (eps_c, eps_u))
    x0, eps = x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u)
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    a_tp = abar[t_prev].item()
    x0_target = (x_prev - math.sqrt(1 - a_tp) * (-0.2 * x_prev + 0.8)) / math.sqrt(a_tp)
    scaled = 10.0 * t_prev
    c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / math.sqrt(scaled**2 + 0.25)
    torch.testing.assert_close(got, c_skip * x_prev + c_out * x0_target, rtol=1e-4, atol=1e-5)
    if n == 0:  # the boundary: f(x, 0) = x
        torch.testing.assert_close(got, x_prev, rtol=1e-4, atol=1e-5)


def test_solver_grid_and_boundary_scalings_are_the_official_ones():
    solver = SkippingStepDDIM(50)
    assert solver.skip == 20 and solver.timesteps[:3].tolist() == [19, 39, 59] and solver.timesteps[-1] == 999
    start, target = solver.start_and_target(torch.tensor([0, 1, 49]))
    assert start.tolist() == [19, 39, 999] and target.tolist() == [0, 19, 979]
    c_skip, c_out = boundary_scalings(torch.tensor([0, 19]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[1] < 1e-5 and c_out[1] > 0.99999


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    parts = debug_parts(tmp_path_factory.mktemp("tokenizer"))
    perturb(parts["transformer"])
    return parts


def test_lcm_step_trains_the_student_and_keeps_teacher_and_target_frozen(parts):
    teacher = parts["transformer"].requires_grad_(False)
    target = copy.deepcopy(teacher)
    student = _engine(copy.deepcopy(teacher).train().requires_grad_(True))
    teacher_before, target_before, student_before = _state(teacher), _state(target), _state(student.module)
    g = torch.Generator().manual_seed(0)
    text, mask = torch.randn(2, 5, 16, generator=g), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    null = (torch.randn(1, 1, 16, generator=g), torch.ones(1, 1, dtype=torch.long))
    draws = lcm_draws(seed=0, step=1, micro_step=0, global_n=2, shape=SHAPE, grid_points=50, rank=0, world=1)
    x0 = draws.pop("latent")
    losses = lcm_step(student, teacher, target, SkippingStepDDIM(50), LCMConfig(), x0, draws, text, mask, null)

    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    assert _changed(teacher_before, teacher) == [] and _changed(target_before, target) == []  # bitwise
    assert any("transformer_blocks" in k for k in _changed(student_before, student.module))


def test_lcm_stage_exports_a_pipeline_diffusers_samples_in_1_2_4_steps(tmp_path):
    from diffusers import LCMScheduler, PixArtSigmaPipeline

    tracking.configure(Settings(root=tmp_path))
    teacher, components, features = teacher_world(tmp_path)
    name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={"save_every": 2, "log_every": 1})})
    job = StageJob(name="lcm", profile_name=name, profile=profile, stage=profile.stages["lcm"].model_copy(update={"steps": 3}),
                   features=features, components=components, out_dir=tmp_path / "outputs/lcm",
                   state_dir=tmp_path / "state", data_version="test", weak_input=teacher)
    out = train_lcm(job)

    assert sorted(p.name for p in (tmp_path / "state").glob("step-*[0-9]")) == ["step-00000002", "step-00000003"]
    assert json.loads((out / "model_index.json").read_text())["scheduler"] == ["diffusers", "LCMScheduler"]
    assert json.loads((out / "stage.json").read_text())["config"]["kind"] == "lcm"
    pipeline = PixArtSigmaPipeline.from_pretrained(out)
    assert isinstance(pipeline.scheduler, LCMScheduler)
    assert pipeline.scheduler.config.beta_schedule == "linear" and pipeline.scheduler.config.original_inference_steps == 50
    sampler = StageSampler.of(out)
    assert sampler.kind == "lcm" and sampler.steps(None, 20) == 4 and StageSampler.of(teacher).kind == "diffusion"
    images = {steps: sampler.sample(pipeline, ["a small red circle on the left"], steps=steps, cfg=4.5,
                                    height=DEBUG_IMAGE_SIDE, width=DEBUG_IMAGE_SIDE, max_tokens=16)[0]
              for steps in (1, 2, 4)}
    pixels = {steps: torch.tensor(list(im.getdata()), dtype=torch.float32) for steps, im in images.items()}
    assert all(im.size == (DEBUG_IMAGE_SIDE, DEBUG_IMAGE_SIDE) for im in images.values())
    assert not torch.equal(pixels[1], pixels[2]) and not torch.equal(pixels[2], pixels[4])

    # `pixart generate --steps 2` samples the LCM stage with its own sampler: the same image (up to a
    # rounding level: the CLI loads the folder its own way and its text features are not trimmed to 16 tokens)
    from PIL import Image
    from typer.testing import CliRunner

    from pixart.cli import app

    png = tmp_path / "two.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(out), "--prompt", "a small red circle on the left",
                                      "--steps", "2", "--height", str(DEBUG_IMAGE_SIDE), "--width", str(DEBUG_IMAGE_SIDE),
                                      "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert "LCM 2 steps, no CFG" in result.output
    diff = np.abs(np.asarray(Image.open(png).convert("RGB"), np.int16) - np.asarray(images[2], np.int16))
    assert diff.max() <= 1, diff.max()  # another weight or sampler would move whole images
