"""Training the tiny profile's VAEs: stand-ins for SD1.5's and SDXL's, which cannot be had offline.

Under DeepSpeed like every trainer. Random crops of the dataset's images at the curriculum's pixel
sizes; loss = MSE + L1 + a small KL (the usual KL-VAE recipe without the GAN and LPIPS terms, whose
weights are not available offline). ``scaling_factor`` = 1 / std of the training latents, the rule
Stable Diffusion's factors came from, unless params fix it.
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
            x, y = rng.integers(0, img.width - CROP + 1), rng.integers(0, img.height - CROP + 1)
            out.append(np.asarray(img.crop((x, y, x + CROP, y + CROP)), dtype=np.float32))
        yield torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2) / 127.5 - 1


def train_vae(name: str, cfg: VAEConfig, train: TrainDefaults, dataset_dir: Path, sizes: list[int],
              out_dir: Path, run) -> float:
    """Train VAE ``name`` and write it to ``out_dir``; returns the final reconstruction MSE."""
    import deepspeed

    from pixart.train.ds_config import deepspeed_config

    _, world = distributed.init()
    vae = build_vae(TINY_VAE_CONFIGS[cfg.config], seed=train.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    ds = deepspeed_config(train.model_copy(update={"grad_clip": 1.0}), cfg.batch_size, world)
    engine, _, _, _ = deepspeed.initialize(model=vae, optimizer=optimizer, config=ds)
    rng = np.random.default_rng(train.seed)
    batches = _crops(dataset_dir, sizes, engine.train_micro_batch_size_per_gpu(), rng)
    mse = torch.tensor(float("nan"))
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
    run.log_metrics({"scaling_factor": scaling}, step=cfg.steps)
    if distributed.is_main():
        with atomic.folder(out_dir) as tmp:
            vae.save_pretrained(tmp, safe_serialization=True)
    distributed.barrier()
    return mse.item()


@torch.no_grad()
def _latent_scale(vae, images: torch.Tensor) -> float:
    return float(1.0 / vae.encode(images.to(vae.device)).latent_dist.sample().std())
