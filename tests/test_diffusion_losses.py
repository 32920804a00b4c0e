"""Learned-sigma losses against a hand computation, schedule facts, caption dropout."""

from __future__ import annotations

import math

import pytest
import torch

from pixart.diffusion.caption_dropout import drop_captions, dropout_draws
from pixart.diffusion.losses import training_losses
from pixart.diffusion.schedule import dpm_solver_scheduler, linear_schedule


def hand_schedule(t: int) -> tuple[float, float, float]:
    """(beta_t, abar_t, abar_{t-1}) of the linear schedule, in plain Python."""
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    abar = 1.0
    abars = []
    for beta in betas:
        abar *= 1 - beta
        abars.append(abar)
    return betas[t], abars[t], abars[t - 1] if t > 0 else 1.0


def hand_posterior(t: int, x0: float, xt: float) -> tuple[float, float, float, float]:
    """(posterior mean coef1, coef2, variance, clipped log-variance) at t."""
    beta, abar, abar_prev = hand_schedule(t)
    coef1 = beta * math.sqrt(abar_prev) / (1 - abar)
    coef2 = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
    var = beta * (1 - abar_prev) / (1 - abar)
    if t == 0:  # beta_tilde_0 = 0: improved DDPM clips to t = 1
        b1, a1, a0 = hand_schedule(1)
        clipped = math.log(b1 * (1 - a0) / (1 - a1))
    else:
        clipped = math.log(var)
    return coef1, coef2, var, clipped


def hand_vb_bits(t: int, x0: float, noise: float, eps: float, v: float) -> float:
    beta, abar, _ = hand_schedule(t)
    xt = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
    coef1, coef2, _, min_log = hand_posterior(t, x0, xt)
    log_var = (v + 1) / 2 * math.log(beta) + (1 - (v + 1) / 2) * min_log
    pred_x0 = xt / math.sqrt(abar) - math.sqrt(1 / abar - 1) * eps
    model_mean = coef1 * pred_x0 + coef2 * xt
    if t > 0:
        true_mean = coef1 * x0 + coef2 * xt
        kl = 0.5 * (
            -1
            + log_var
            - min_log
            + math.exp(min_log - log_var)
            + (true_mean - model_mean) ** 2 / math.exp(log_var)
        )
        return kl / math.log(2)

    def cdf(z: float) -> float:
        return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

    std = math.exp(0.5 * log_var)
    prob = cdf((x0 - model_mean + 1 / 255) / std) - cdf((x0 - model_mean - 1 / 255) / std)
    return -math.log(prob) / math.log(2)


def test_vb_and_mse_match_hand_computation() -> None:
    x0, noise = 0.3, -0.7
    eps, v = -0.5, 0.4
    t = torch.tensor([0, 1, 10, 500, 999])
    shape = (len(t), 1, 1, 1)
    output = torch.cat([torch.full(shape, eps), torch.full(shape, v)], dim=1).double()
    losses = training_losses(output, torch.full(shape, x0).double(), torch.full(shape, noise).double(), t)
    expected_vb = torch.tensor([hand_vb_bits(int(s), x0, noise, eps, v) for s in t], dtype=torch.float64)
    torch.testing.assert_close(losses["vb"], expected_vb, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["mse"], torch.full((len(t),), (noise - eps) ** 2, dtype=torch.float64))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])


def test_vb_trains_only_the_variance() -> None:
    output = torch.randn(2, 8, 4, 4, requires_grad=True)
    losses = training_losses(output, torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([3, 700]))
    (grad,) = torch.autograd.grad(losses["vb"].sum(), output)
    assert torch.count_nonzero(grad[:, :4]) == 0
    assert torch.count_nonzero(grad[:, 4:]) > 0


def test_min_snr_weighting_scales_mse_by_min_snr_gamma_over_snr() -> None:
    t = torch.tensor([5, 900])
    output, x0, noise = torch.randn(2, 8, 2, 2), torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    plain = training_losses(output, x0, noise, t)
    weighted = training_losses(output, x0, noise, t, min_snr_gamma=5.0)
    abar = linear_schedule().alphas_cumprod[t].float()
    snr = abar / (1 - abar)
    torch.testing.assert_close(weighted["mse"], plain["mse"] * torch.clamp(snr, max=5.0) / snr)
    assert weighted["mse"][0] < plain["mse"][0] and torch.isclose(weighted["mse"][1], plain["mse"][1])


def test_sampler_schedule_matches_training_schedule() -> None:
    scheduler = dpm_solver_scheduler()
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), linear_schedule().alphas_cumprod, rtol=1e-6, atol=0
    )


def test_data_range_solver_clamps_x0_per_channel_and_nothing_else() -> None:
    latent_range = {"low": [-1.0, -2.0], "high": [1.0, 0.5]}
    clamped, plain = dpm_solver_scheduler(latent_range), dpm_solver_scheduler()
    for scheduler in (clamped, plain):
        scheduler.set_timesteps(20)
        scheduler._step_index = 0  # the first solver step, t = 999: x0 = (x_t - sigma eps) / alpha is wildest there
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g)
    x0, x0_plain = clamped.convert_model_output(eps, sample=x_t), plain.convert_model_output(eps, sample=x_t)
    assert x0_plain.abs().max() > 10  # the raw prediction leaves the range
    torch.testing.assert_close(x0, torch.stack([x0_plain[:, 0].clamp(-1, 1), x0_plain[:, 1].clamp(-2, 0.5)], 1))
    with pytest.raises(ValueError, match="latent_range"):
        dpm_solver_scheduler({"low": [1.0], "high": [0.0]})


def test_caption_dropout_replaces_drawn_captions_by_null_caption() -> None:
    features, mask = torch.randn(1000, 6, 3), torch.ones(1000, 6, dtype=torch.long)
    null, null_mask = torch.zeros(1, 6, 3), torch.tensor([[1, 0, 0, 0, 0, 0]])
    out, out_mask = drop_captions(
        features, mask, null, null_mask, dropout_draws(1000, 0.1, torch.Generator().manual_seed(0))
    )
    dropped = (out == 0).all(dim=(1, 2))
    assert 60 < int(dropped.sum()) < 140
    assert torch.equal(out_mask[dropped], null_mask.expand(int(dropped.sum()), -1))
    assert torch.equal(out[~dropped], features[~dropped])
    with pytest.raises(ValueError, match="max length"):
        drop_captions(features, mask, torch.zeros(1, 4, 3), null_mask[:, :4], dropout_draws(1000, 0.1))
    with pytest.raises(ValueError, match="p must be"):
        dropout_draws(4, 1.5)
