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

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pixart import atomic
from pixart.config import TrainDefaults, VAEConfig
from pixart.data.format import load_dataset
from pixart.models.builders import TINY_VAE_CONFIGS, build_vae
from pixart.train import distributed

KL_WEIGHT = 1e-6
CROP = 32
CONTENT_CANDIDATES = 4
HELD_OUT_CROPS = 128
# a pixel belongs to an object when its colour is this far (L1 over RGB in [-1, 1]) from the crop's
# median colour, which is the background's in these scenes
OBJECT_THRESHOLD = 0.3


def _crops(dataset_dir: Path, sizes: list[int], batch: int, rng: np.random.Generator):
    entries = load_dataset(dataset_dir)
    images = [Image.open(dataset_dir / e.path).convert("RGB") for e in entries]
    while True:
        out = []
        for i in rng.integers(0, len(images), batch):
            side = int(rng.choice(sizes))
            img = images[i]
            scale = side / min(img.size)
            img = img.resize((max(CROP, round(img.width * scale)), max(CROP, round(img.height * scale))), Image.BICUBIC)
            pixels = np.asarray(img, dtype=np.float32)
            candidates = []
            for _ in range(CONTENT_CANDIDATES):
                y, x = rng.integers(0, pixels.shape[0] - CROP + 1), rng.integers(0, pixels.shape[1] - CROP + 1)
                candidates.append(pixels[y : y + CROP, x : x + CROP])
            out.append(max(candidates, key=lambda c: float(c.std(axis=(0, 1)).sum())))
        yield torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2) / 127.5 - 1


def train_vae(name: str, cfg: VAEConfig, train: TrainDefaults, dataset_dir: Path, heldout_dir: Path,
              sizes: list[int], out_dir: Path, run) -> dict[str, float]:
    """Train VAE ``name`` and write it to ``out_dir``; returns its held-out reconstruction errors."""
    import deepspeed

    from pixart.train.ds_config import deepspeed_config
    from pixart.train.optim import cosine_with_warmup

    _, world = distributed.init()
    vae = build_vae(TINY_VAE_CONFIGS[cfg.config], seed=train.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    schedule = cosine_with_warmup(optimizer, cfg.steps // 10, cfg.steps)
    ds = deepspeed_config(train.model_copy(update={"grad_clip": 1.0}), cfg.batch_size, world)
    engine, _, _, _ = deepspeed.initialize(model=vae, optimizer=optimizer, lr_scheduler=schedule, config=ds)
    # the posterior samples come from torch's global generator, which a fresh process seeds at random:
    # unseeded, two runs of the same curriculum trained different VAEs (old VAE held-out MSE 0.16 vs 0.03)
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    batches = _crops(dataset_dir, sizes, engine.train_micro_batch_size_per_gpu(), rng)
    for step in tqdm(range(1, cfg.steps + 1), desc=f"vae-{name}", disable=not distributed.is_main()):
        x = next(batches).to(distributed.device())
        posterior = engine.module.encode(x).latent_dist
        recon = engine.module.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + torch.nn.functional.l1_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()
        engine.backward(loss)
        engine.step()
        if step % train.log_every == 0 or step == cfg.steps:
            run.log_metrics({"loss": loss.item(), "mse": mse.item()}, step=step)

    vae = engine.module.eval()
    scaling = cfg.scaling_factor or _latent_scale(vae, next(batches))
    vae.register_to_config(scaling_factor=scaling)
    held_out = heldout_errors(vae, heldout_dir, sizes, seed=train.seed)
    run.log_metrics({"scaling_factor": scaling, **held_out}, step=cfg.steps)
    if distributed.is_main():
        with atomic.folder(out_dir) as tmp:
            vae.save_pretrained(tmp, safe_serialization=True)
    distributed.barrier()
    return held_out


@torch.no_grad()
def heldout_errors(vae, heldout_dir: Path, sizes: list[int], seed: int) -> dict[str, float]:
    """Reconstruction MSE (pixels in [-1, 1], posterior mode) on fixed crops of the held-out images:
    over all pixels, and over the objects' pixels only."""
    crops = next(_crops(heldout_dir, sizes, HELD_OUT_CROPS, np.random.default_rng(seed))).to(vae.device)
    squared = (vae.decode(vae.encode(crops).latent_dist.mode()).sample - crops) ** 2
    background = crops.flatten(2).median(-1).values[..., None, None]
    objects = ((crops - background).abs().sum(1, keepdim=True) > OBJECT_THRESHOLD).float()
    return {
        "heldout_mse": squared.mean().item(),
        "heldout_object_mse": ((squared * objects).sum() / (3 * objects.sum()).clamp(min=1)).item(),
    }


@torch.no_grad()
def _latent_scale(vae, images: torch.Tensor) -> float:
    return float(1.0 / vae.encode(images.to(vae.device)).latent_dist.sample().std())
