"""Training steps/s reading the feature cache vs encoding VAE + text on the fly, same model and batches.

    OMP_NUM_THREADS=1 python bench/feature_cache.py [--images 256 --batch 64 --steps 10]

Both loops run the same tiny-profile transformer step (forward, ε-MSE, backward, AdamW) on the same
AspectRatioBatchSampler batches; they differ only in where latents and T5 features come from. The
cache build time is printed separately (it is paid once per dataset / VAE / text-encoder version).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pixart.config import load_profile
from pixart.data.buckets import AspectRatioBatchSampler
from pixart.data.features import FeatureCache, build_feature_cache, load_pixels
from pixart.data.format import load_dataset
from pixart.data.generate import generate_dataset
from pixart.models.builders import TINY_VAE_CONFIGS, build_vae, encode_captions, packaged_text_encoder
from pixart.models.specs import get_spec
from pixart.models.transformer import build_transformer, pe_interpolation


def train_step(model, optimizer, mean, std, text, mask, scaling_factor, alphas_cumprod) -> float:
    """One ε-prediction step on latents sampled from the VAE posterior."""
    x0 = (mean + std * torch.randn_like(std)) * scaling_factor
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],))
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = torch.randn_like(x0)
    out = model(a.sqrt() * x0 + (1 - a).sqrt() * noise, encoder_hidden_states=text, encoder_attention_mask=mask,
                timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    loss = torch.nn.functional.mse_loss(out[:, :4], noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32, help="tiny 256-px stage = 32 px")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        generate_dataset(tmp / "data", n=args.images, seed=0, resolution_px=args.resolution)
        entries = load_dataset(tmp / "data")
        vae = build_vae(TINY_VAE_CONFIGS["new"]).eval()
        text_encoder, tokenizer = packaged_text_encoder(load_profile("tiny")[1].text_encoder.package)

        start = time.perf_counter()
        cache_dir = build_feature_cache(tmp / "data", tmp / "cache", vae=vae, text_encoder=text_encoder,
                                        tokenizer=tokenizer, resolution_px=args.resolution, caption_kind="dense",
                                        max_tokens=args.max_tokens, batch_size=args.batch)
        build_s = time.perf_counter() - start
        cache = FeatureCache(cache_dir)
        sampler = AspectRatioBatchSampler(cache.ratios, args.batch, seed=0)
        batches: list[list[int]] = []
        while len(batches) <= args.steps:  # as many epochs as the steps need
            batches.extend(sampler)
        batches = batches[: args.steps + 1]

        latent_side = cache[0]["latent_mean"].shape[-1]
        betas = torch.linspace(1e-4, 0.02, 1000)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        scaling = vae.config.scaling_factor

        def cached(batch):
            b = FeatureCache.collate([cache[i] for i in batch])
            return b["latent_mean"], b["latent_std"], b["text"], b["mask"]

        @torch.no_grad()
        def on_the_fly(batch):
            items = [cache.items[i] for i in batch]
            pixels = torch.stack([load_pixels(tmp / "data" / entries[it["index"]].path, it["height"], it["width"])
                                  for it in items])
            dist = vae.encode(pixels).latent_dist
            text, mask = encode_captions(text_encoder, tokenizer, [entries[it["index"]].sharegpt4v for it in items],
                                         args.max_tokens)
            return dist.mean, dist.std, text, mask

        results = {}
        for name, source in (("cache", cached), ("on-the-fly", on_the_fly)):
            torch.manual_seed(0)
            model = build_transformer(get_spec("tiny"), sample_size=latent_side,
                                      interpolation_scale=pe_interpolation(256))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            train_step(model, optimizer, *source(batches[0]), scaling, alphas_cumprod)  # warm-up
            start = time.perf_counter()
            for batch in batches[1:]:
                train_step(model, optimizer, *source(batch), scaling, alphas_cumprod)
            results[name] = (len(batches) - 1) / (time.perf_counter() - start)

    print(f"images {args.images}, {args.resolution} px, batch {args.batch}, max_tokens {args.max_tokens}, "
          f"threads {torch.get_num_threads()}, tiny transformer {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    print(f"cache build: {build_s:.1f} s for {len(cache)} items")
    for name, steps_per_s in results.items():
        print(f"{name:>10}: {steps_per_s:.3f} steps/s")
    print(f"ratio cache / on-the-fly: {results['cache'] / results['on-the-fly']:.2f}x")


if __name__ == "__main__":
    main()
