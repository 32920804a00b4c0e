"""DMD: one generator / fake-score step under DeepSpeed, and the one-step sampler against the formula."""

import copy

import pytest
import torch

from pixart.config import DMDConfig, TrainDefaults
from pixart.diffusion.one_step import sample_one_step
from pixart.diffusion.sampling import image_generators
from pixart.models.builders import encode_captions
from pixart.train.dmd import distribution_matching_loss, dmd_draws, dmd_step, generate
from tests.helpers_models import DEBUG_IMAGE_SIDE, DEBUG_LATENT_SIDE, debug_parts, perturb

SHAPE = torch.Size((4, DEBUG_LATENT_SIDE, DEBUG_LATENT_SIDE))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    parts = debug_parts(tmp_path_factory.mktemp("tokenizer"))
    perturb(parts["transformer"])  # a freshly initialised final layer outputs zeros
    return parts


def _engine(model):
    import deepspeed

    from pixart.train import distributed
    from pixart.train.ds_config import deepspeed_config

    distributed.init()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=deepspeed_config(TrainDefaults(grad_clip=1.0), 2, 1))
    return engine


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


def test_dmd_step_trains_generator_and_fake_score_and_keeps_teacher_frozen(parts):
    teacher = parts["transformer"].requires_grad_(False)
    generator, fake_score = _engine(copy.deepcopy(teacher).train().requires_grad_(True)), \
        _engine(copy.deepcopy(teacher).train().requires_grad_(True))
    teacher_before, generator_before, fake_before = _state(teacher), _state(generator.module), _state(fake_score.module)

    g = torch.Generator().manual_seed(0)
    captions = {"text": torch.randn(2, 5, 16, generator=g), "mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])}
    pairs = {"noise": torch.randn(2, *SHAPE, generator=g), "latent": torch.randn(2, *SHAPE, generator=g),
             "text": torch.randn(2, 3, 16, generator=g), "mask": torch.ones(2, 3, dtype=torch.long)}
    null = (torch.randn(1, 1, 16, generator=g), torch.ones(1, 1, dtype=torch.long))
    draws = dmd_draws(seed=0, step=1, micro_step=0, global_n=2, shape=SHAPE, n_pairs=2, rank=0, world=1)
    draws.pop("pairs")
    losses = dmd_step(generator, fake_score, teacher, DMDConfig(pairs=2), draws, captions, null, pairs)

    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["distribution_matching"] > 0 and losses["regression"] > 0 and losses["fake_score"] > 0
    assert _changed(teacher_before, teacher) == []  # bitwise frozen
    assert any("transformer_blocks" in k for k in _changed(generator_before, generator.module))
    assert any("transformer_blocks" in k for k in _changed(fake_before, fake_score.module))


def test_distribution_matching_gradient_is_the_normalised_score_difference():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, *SHAPE, generator=g, requires_grad=True)
    real, fake = torch.randn(3, *SHAPE, generator=g), torch.randn(3, *SHAPE, generator=g)
    distribution_matching_loss(x0, real, fake).backward()
    weight = (x0.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(x0.grad * x0.numel(), (fake - real) / weight)


def test_one_step_sample_equals_the_generator_formula(parts):
    from diffusers import PixArtSigmaPipeline

    pipeline = PixArtSigmaPipeline(**parts)
    prompts = ["a small red circle on the left", "a large blue square on the top"]
    for t_gen in (400, 999):
        latents = sample_one_step(pipeline, prompts, t_gen=t_gen, seed=3, height=DEBUG_IMAGE_SIDE,
                                  width=DEBUG_IMAGE_SIDE, max_tokens=16, output_type="latent")
        z = torch.cat([torch.randn((1, *SHAPE), generator=g) for g in image_generators(3, 2)])  # noise per image
        with torch.no_grad():
            # the sampler's caption features: trimmed to the longest caption (padding is masked out)
            text, mask = encode_captions(pipeline.text_encoder, pipeline.tokenizer, prompts, 16, pad_to_max=False)
            expected = generate(pipeline.transformer, z, t_gen, text, mask)
        torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    # `--steps 1` through DPM-Solver alone starts at t = 999: not the generator at t_gen = 400
    solver = pipeline(prompt=prompts, num_inference_steps=1, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(3), height=DEBUG_IMAGE_SIDE, width=DEBUG_IMAGE_SIDE,
                      max_sequence_length=16, use_resolution_binning=False, clean_caption=False,
                      output_type="latent").images
    assert not torch.allclose(solver, sample_one_step(pipeline, prompts, t_gen=400, seed=3, height=DEBUG_IMAGE_SIDE,
                                                      width=DEBUG_IMAGE_SIDE, max_tokens=16, output_type="latent"))
