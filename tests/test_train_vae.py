"""The tiny VAE trainer: the same seed gives the same VAE, whatever torch's global generator holds."""

import torch
from safetensors.torch import load_file

from pixart.config import TrainDefaults, VAEConfig
from pixart.data.generate import generate_dataset
from pixart.train.vae import train_vae


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
