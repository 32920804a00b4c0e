"""Training losses of PixArt: epsilon MSE plus the improved-DDPM variational bound for learned sigma.

The model outputs 2C channels: epsilon, then v in [-1, 1] that interpolates the log-variance between
log beta_t (upper bound) and log beta_tilde_t (lower bound). The VB term is KL(q(x_{t-1}|x_t,x_0) ||
p(x_{t-1}|x_t)) in bits, with the model mean built from a *detached* epsilon so that the VB trains only
the variance (Nichol & Dhariwal 2021, "hybrid" loss); at t = 0 it is the discretised Gaussian decoder
NLL. This mirrors the official PixArt / improved-diffusion code (loss type MSE, VB unscaled).
"""

from __future__ import annotations

import math

import torch

from pixart.diffusion.schedule import Schedule, linear_schedule

_DEFAULT_SCHEDULE = linear_schedule()


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] cast to ``like``'s dtype, shaped to broadcast over its non-batch dims."""
    out = values.to(t.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.ndim - 1)))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log-likelihood of ``x`` in [-1, 1] under a Gaussian discretised into 256 bins, elementwise, nats."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def q_sample(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: Schedule = _DEFAULT_SCHEDULE
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
    abar = _at(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def training_losses(
    model_fn_output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    *,
    schedule: Schedule = _DEFAULT_SCHEDULE,
    min_snr_gamma: float | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample losses ``{"loss", "mse", "vb"}`` (each shape (B,)) for a model output (B, 2C, ...) on
    x_t = q_sample(x0, noise, t). ``loss = w * mse + vb``; ``w = min(SNR_t, gamma) / SNR_t`` when
    ``min_snr_gamma`` is set (min-SNR weighting of the epsilon MSE), else 1."""
    channels = x0.shape[1]
    if model_fn_output.shape[1] != 2 * channels or model_fn_output.shape[2:] != x0.shape[2:]:
        raise ValueError(
            f"model output {tuple(model_fn_output.shape)} is not (B, 2C, ...) for x0 {tuple(x0.shape)}"
        )
    eps, v = model_fn_output[:, :channels], model_fn_output[:, channels:]
    x_t = q_sample(x0, noise, t, schedule)

    mse = _mean_flat((noise - eps) ** 2)
    if min_snr_gamma is not None:
        abar = schedule.alphas_cumprod.to(t.device)[t].to(mse.dtype)
        snr = abar / (1.0 - abar)
        mse = mse * snr.clamp(max=min_snr_gamma) / snr

    # the model's posterior, its mean from a detached epsilon
    abar = _at(schedule.alphas_cumprod, t, x0)
    pred_x0 = (1.0 / abar).sqrt() * x_t - (1.0 / abar - 1.0).sqrt() * eps.detach()
    coef1 = _at(schedule.posterior_mean_coef1, t, x0)
    coef2 = _at(schedule.posterior_mean_coef2, t, x0)
    model_mean = coef1 * pred_x0 + coef2 * x_t
    min_log = _at(schedule.posterior_log_variance_clipped, t, x0)
    max_log = _at(torch.log(schedule.betas), t, x0)
    frac = (v + 1.0) / 2.0
    model_log_variance = frac * max_log + (1.0 - frac) * min_log

    true_mean = coef1 * x0 + coef2 * x_t
    kl = _mean_flat(normal_kl(true_mean, min_log, model_mean, model_log_variance)) / math.log(2.0)
    decoder_nll = -_mean_flat(
        discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    ) / math.log(2.0)
    vb = torch.where(t == 0, decoder_nll, kl)
    return {"loss": mse + vb, "mse": mse, "vb": vb}
