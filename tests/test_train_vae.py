"""The tiny VAE trainer: the same seed gives the same VAE, whatever torch's global generator holds;
the objects' pixels weigh more in its loss."""

import pytest
import torch
from safetensors.torch import load_file

from pixart.config import TrainDefaults, VAEConfig
from pixart.data.generate import generate_dataset
from pixart.train.vae import object_mask, reconstruction_loss, train_vae


class _Run:
    def log_metrics(self, *args, **kwargs) -> None:
        pass


def test_vae_training_is_reproducible_from_its_seed(tmp_path) -> None:
    generate_dataset(tmp_path / "data", n=8, seed=0, resolution_px=32)
    cfg = VAEConfig(config="old", steps=3, batch_size=2)
    weights = []
    for global_seed in (1, 2):  # a fresh process starts torch's global generator at a random seed
        torch.manual_seed(global_seed)
        out = tmp_path / f"vae-{global_seed}"
        train_vae("old", cfg, TrainDefaults(), tmp_path / "data", tmp_path / "data", [32], out, _Run())
        weights.append(load_file(out / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_object_pixels_weigh_object_weight_more_in_the_reconstruction_loss() -> None:
    x = torch.full((2, 3, 16, 16), 0.0)  # gray backgrounds
    x[:, 0, 4:8, 4:8], x[:, 1:, 4:8, 4:8] = 0.9, -0.8  # a red square
    assert object_mask(x).sum() == 2 * 16 and object_mask(x)[0, 0, 4:8, 4:8].all()
    brown_blob = x.clone()
    brown_blob[:, :, 4:8, 4:8] = 0.1  # placed, hue lost: all of the error is on the object
    plain = reconstruction_loss(brown_blob, x, 0.0)
    assert reconstruction_loss(brown_blob, x, 10.0) == pytest.approx(11 * plain)
    assert reconstruction_loss(x, x, 10.0) == 0
