"""Training the tiny profile's VAEs: stand-ins for SD1.5's and SDXL's, which cannot be had offline.

Under DeepSpeed like every trainer. Crops of the dataset's images at the curriculum's pixel sizes;
loss = MSE + L1 + a small KL (the usual KL-VAE recipe without the GAN and LPIPS terms, whose weights
are not available offline); the lr decays on a cosine (a constant lr left the held-out MSE at ~0.16
where the decay reaches ~0.04 in the same steps).

The objects of the generated scenes cover a few per cent of an image, so a VAE can reach a low MSE
by drawing the background alone, and then no later stage can draw an object. Each crop is therefore
the most varied of ``CONTENT_CANDIDATES`` random ones, and the quality reported is the error on the
objects' pixels as well as on all pixels (measured: 200 steps, batch 8: object MSE 0.58 with plain
random crops, 0.44 with best-of-4; 400 steps at batch 16, lr 1e-3: 0.23, objects drawn in place).

``scaling_factor`` = 1 / std of the training latents, the rule Stable Diffusion's factors came from,
unless params fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pixart import atomic, tracking
from pixart.config import TrainDefaults, VAEConfig
from pixart.data.format import load_dataset
from pixart.models.builders import TINY_VAE_CONFIGS, build_vae
from pixart.train import distributed
from pixart.train.loop import Trainer, keyed_generator
from pixart.train.optim import cosine_with_warmup

KL_WEIGHT = 1e-6
CROP = 32
CONTENT_CANDIDATES = 4
HELD_OUT_CROPS = 128
# a pixel belongs to an object when its colour is this far (L1 over RGB in [-1, 1]) from the crop's
# median colour, which is the background's in these scenes
OBJECT_THRESHOLD = 0.3


def load_images(dataset_dir: Path) -> list[Image.Image]:
    return [Image.open(dataset_dir / e.path).convert("RGB") for e in load_dataset(dataset_dir)]


def crops(images: list[Image.Image], sizes: list[int], batch: int, g: torch.Generator) -> torch.Tensor:
    """``batch`` CROP x CROP crops in [-1, 1], each of a random image resized to a random one of
    ``sizes`` (shorter side), the most varied of ``CONTENT_CANDIDATES`` random positions."""
    out = []
    for i in torch.randint(0, len(images), (batch,), generator=g).tolist():
        side = sizes[int(torch.randint(0, len(sizes), (1,), generator=g))]
        img = images[i]
        scale = side / min(img.size)
        img = img.resize((max(CROP, round(img.width * scale)), max(CROP, round(img.height * scale))), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.float32))
        candidates = []
        for _ in range(CONTENT_CANDIDATES):
            y = int(torch.randint(0, pixels.shape[0] - CROP + 1, (1,), generator=g))
            x = int(torch.randint(0, pixels.shape[1] - CROP + 1, (1,), generator=g))
            candidates.append(pixels[y : y + CROP, x : x + CROP])
        out.append(max(candidates, key=lambda c: float(c.std(dim=(0, 1)).sum())))
    return torch.stack(out).permute(0, 3, 1, 2) / 127.5 - 1


class VAETrainer(Trainer):
    """One tiny VAE from scratch: loss = MSE + L1 + KL on crops, a cosine lr, no EMA; exports the VAE
    folder and returns its held-out reconstruction errors."""

    def __init__(self, name: str, cfg: VAEConfig, train: TrainDefaults, dataset_dir: Path, heldout_dir: Path,
                 sizes: list[int], out_dir: Path, state_dir: Path, profile_name: str) -> None:
        super().__init__(f"vae-{name}", train, cfg.steps, cfg.batch_size, state_dir)
        self.cfg, self.dataset_dir, self.heldout_dir = cfg, dataset_dir, heldout_dir
        self.sizes, self.out_dir, self.profile_name = sizes, out_dir, profile_name

    def build(self) -> None:
        vae = build_vae(TINY_VAE_CONFIGS[self.cfg.config], seed=self.train.seed)
        optimizer = torch.optim.AdamW(vae.parameters(), lr=self.cfg.lr)
        schedule = cosine_with_warmup(optimizer, self.cfg.steps // 10, self.cfg.steps)
        self.engine = self.initialize(vae, optimizer, schedule, self.train.model_copy(update={"grad_clip": 1.0}))
        self.images = load_images(self.dataset_dir)

    def micro_step(self, step: int, micro_step: int) -> dict[str, torch.Tensor]:
        g = keyed_generator(self.train.seed, step, micro_step)
        micro = self.engine.train_micro_batch_size_per_gpu()
        x = crops(self.images, self.sizes, micro * self.world, g)[self.rank :: self.world].to(self.device)
        posterior = self.engine.module.encode(x).latent_dist
        recon = self.engine.module.decode(posterior.sample(generator=g)).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + torch.nn.functional.l1_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()
        self.engine.backward(loss)
        self.engine.step()
        return {"loss": loss.detach(), "mse": mse.detach()}

    def run_params(self) -> dict[str, Any]:
        return {"profile": self.profile_name, "vae": self.cfg.model_dump(mode="json"), "sizes": self.sizes}

    def export(self, run: tracking.StageRun) -> dict[str, float]:
        vae = self.engine.module.eval()
        # step 0 is no training step: its draws are the crops the latent scale is measured on
        scaling = self.cfg.scaling_factor or _latent_scale(
            vae, crops(self.images, self.sizes, self.engine.train_micro_batch_size_per_gpu(),
                       keyed_generator(self.train.seed, 0, 0)))
        vae.register_to_config(scaling_factor=scaling)
        held_out = heldout_errors(vae, self.heldout_dir, self.sizes, seed=self.train.seed)
        run.log_metrics({"scaling_factor": scaling, **held_out}, step=self.steps)
        if distributed.is_main():
            with atomic.folder(self.out_dir) as tmp:
                vae.save_pretrained(tmp, safe_serialization=True)
        distributed.barrier()
        return held_out


@torch.no_grad()
def heldout_errors(vae, heldout_dir: Path, sizes: list[int], seed: int) -> dict[str, float]:
    """Reconstruction MSE (pixels in [-1, 1], posterior mode) on fixed crops of the held-out images:
    over all pixels, and over the objects' pixels only."""
    crops_ = crops(load_images(heldout_dir), sizes, HELD_OUT_CROPS, torch.Generator().manual_seed(seed)).to(vae.device)
    squared = (vae.decode(vae.encode(crops_).latent_dist.mode()).sample - crops_) ** 2
    background = crops_.flatten(2).median(-1).values[..., None, None]
    objects = ((crops_ - background).abs().sum(1, keepdim=True) > OBJECT_THRESHOLD).float()
    return {
        "heldout_mse": squared.mean().item(),
        "heldout_object_mse": ((squared * objects).sum() / (3 * objects.sum()).clamp(min=1)).item(),
    }


@torch.no_grad()
def _latent_scale(vae, images: torch.Tensor) -> float:
    return float(1.0 / vae.encode(images.to(vae.device)).latent_dist.sample().std())
