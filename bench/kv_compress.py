"""Benchmark: forward + backward time of the transformer with and without KV token compression.

    OMP_NUM_THREADS=2 python bench/kv_compress.py                      # tiny width, CPU, 256-4096 tokens
    python bench/kv_compress.py --spec xl --dtype bf16 --device cuda   # XL/2 at the 1024^2, 2K and 4K grids

Compression is on in the spec's KV layers (xl: 14-27 of 28, as the paper); both models share weights.
The paper reports about 34 % less training and inference time at high resolution.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers.utils import logging as diffusers_logging

from pixart.models.specs import get_spec
from pixart.models.transformer import build_transformer, pe_interpolation

# xl: latent side = px / 8, tokens = (latent side / patch 2)^2
XL_GRIDS = {1024: 4096, 2048: 16384, 4096: 65536}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    models: list[torch.nn.Module], side: int, args: argparse.Namespace, device: torch.device
) -> list[float]:
    """Median seconds of one forward + backward per model on a (batch, 4, side, side) latent. The models
    alternate within each repeat, so that drifting load on a shared machine hits both alike."""
    dtype = DTYPES[args.dtype]
    x = torch.randn(args.batch, 4, side, side, device=device, dtype=dtype)
    captions = torch.randn(args.batch, 300, models[0].config.caption_channels, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    times: list[list[float]] = [[] for _ in models]
    for i in range(args.warmup + args.repeats):
        for model, own in zip(models, times):
            sync(device)
            start = time.perf_counter()
            out = model(x, encoder_hidden_states=captions, timestep=t).sample
            out.float().square().mean().backward()
            sync(device)
            if i >= args.warmup:
                own.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    return [statistics.median(own) for own in times]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument(
        "--tokens", type=int, nargs="+", help="token counts (squares); xl default: 1K/2K/4K grids"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--grad-checkpoint", action="store_true", help="gradient checkpointing (4K on one GPU)"
    )
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()  # the bf16 cast warns about an empty list of fp32 modules

    spec = get_spec(args.spec)
    device = torch.device(args.device)
    tokens = args.tokens or (list(XL_GRIDS.values()) if spec.name == "xl" else [256, 1024, 4096])
    torch.manual_seed(0)
    plain = build_transformer(spec, sample_size=128, interpolation_scale=pe_interpolation(1024))
    compressed = build_transformer(
        spec,
        sample_size=128,
        interpolation_scale=pe_interpolation(1024),
        kv_compress_layers=spec.kv_compress_layers,
    )
    compressed.load_state_dict(plain.state_dict(), strict=False)
    for model in (plain, compressed):
        model.to(device=device, dtype=DTYPES[args.dtype]).train()
        if args.grad_checkpoint:
            model.enable_gradient_checkpointing()

    print(
        f"spec {spec.name}, KV layers {list(spec.kv_compress_layers)} of {spec.depth}, {args.device} {args.dtype}, "
        f"batch {args.batch}, torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'tokens':>7} {'grid':>9} {'plain s':>9} {'KV s':>9} {'KV/plain':>9} {'change':>8}")
    for count in tokens:
        grid = round(count**0.5)
        if grid * grid != count or grid % 2:
            raise SystemExit(f"--tokens {count}: need a square with an even side")
        side = grid * spec.patch_size
        try:
            plain_s, kv_s = time_steps([plain, compressed], side, args, device)
        except torch.OutOfMemoryError:
            print(f"{count:>7} {f'{grid}x{grid}':>9}  out of memory")
            torch.cuda.empty_cache()
            continue
        ratio = kv_s / plain_s
        print(
            f"{count:>7} {f'{grid}x{grid}':>9} {plain_s:>9.3f} {kv_s:>9.3f} {ratio:>9.3f} {100 * (ratio - 1):>+7.1f}%"
        )


if __name__ == "__main__":
    main()
