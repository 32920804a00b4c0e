"""Benchmark: one training step of the tiny transformer, eager against ``torch.compile``, side by side.

    OMP_NUM_THREADS=2 python bench/compile_step.py                   # align's step: 32 px, batch 64
    OMP_NUM_THREADS=2 python bench/compile_step.py --pixels 64 --batch 32 --lengths 40 44

The step is the trainer's (``denoiser_output`` + ``training_losses``, AdamW) on random latents of the
tiny VAE's size and caption features of MiniLM's width, with a mask over ``--lengths`` tokens: the
feature cache pads a batch to its longest caption, so a stage sees several lengths, and each new one
costs a compiled model a recompile (reported as the compile seconds of the second length). Both
models start from the same weights and draw the same batches; the median step over ``--steps``
after ``--warmup`` is printed for each, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def steps(model, pixels: int, batch: int, length: int, n: int, seed: int) -> list[float]:
    """Seconds of each of ``n`` training steps of ``model`` at one caption length."""
    from pixart.diffusion.losses import q_sample, training_losses
    from pixart.train.trainer import denoiser_output

    g = torch.Generator().manual_seed(seed)
    side = pixels // 4  # the tiny VAEs downsample 4x
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 4, side, side, generator=g)
    text, mask = torch.randn(batch, length, 384, generator=g), torch.ones(batch, length, dtype=torch.long)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        t, noise = torch.randint(0, 1000, (batch,), generator=g), torch.randn(x0.shape, generator=g)
        out = denoiser_output(model, q_sample(x0, noise, t), t, text, mask)
        loss = training_losses(out, x0, noise, t)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[40, 44], help="Caption lengths, in turn.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer, pe_interpolation

    torch.manual_seed(0)
    weights = build_transformer(get_spec("tiny"), sample_size=args.pixels // 4,
                                interpolation_scale=pe_interpolation(args.pixels * 8)).state_dict()
    rows = []
    for mode in ("eager", "compile"):
        model = build_transformer(get_spec("tiny"), sample_size=args.pixels // 4,
                                  interpolation_scale=pe_interpolation(args.pixels * 8))
        model.load_state_dict(weights)
        run = torch.compile(model) if mode == "compile" else model
        first, median = [], []
        for length in args.lengths:
            timed = steps(run, args.pixels, args.batch, length, args.warmup + args.steps, seed=length)
            first.append(timed[0])
            median.append(statistics.median(timed[args.warmup:]))
        rows.append((mode, first, median))
    print(f"tiny transformer, {args.pixels} px, batch {args.batch}, caption lengths {args.lengths}")
    print(f"{'mode':<8} {'first step s (per length)':<28} {'median step s (per length)':<28}")
    for mode, first, median in rows:
        print(f"{mode:<8} {' / '.join(f'{s:.2f}' for s in first):<28} {' / '.join(f'{s:.4f}' for s in median):<28}")
    ratio = statistics.mean(rows[0][2]) / statistics.mean(rows[1][2])
    print(f"compile speed-up per step: {ratio:.2f}x")


if __name__ == "__main__":
    main()
