"""Benchmark: one training step of the tiny transformer at its width (the baseline) against the same
spec narrower, side by side, at each size the curriculum trains most.

    OMP_NUM_THREADS=2 python bench/tiny_width.py                 # hidden 128 against 64
    OMP_NUM_THREADS=2 python bench/tiny_width.py --hidden 96 64

The step is ``compile_step.steps`` (the trainer's loss and AdamW on random latents and MiniLM-wide
caption features); the median over ``--steps`` after ``--warmup`` is printed per size, with the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from compile_step import steps

# (pixels, batch): align's 32 px at 64, aes-512's 64 px at 32, the 1024 rows' 128 px at 16
SIZES = [(32, 64), (64, 32), (128, 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--length", type=int, default=42, help="Caption tokens (dense captions: ~40).")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64], help="Narrower widths (heads stay).")
    args = parser.parse_args()

    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer, pe_interpolation

    tiny = get_spec("tiny")
    specs = [tiny, *(dataclasses.replace(tiny, head_dim=h // tiny.num_heads) for h in args.hidden)]
    print(f"tiny transformer step (s), caption length {args.length}; speed-up over hidden {tiny.hidden_size} (tiny)")
    print(f"{'px':>4} {'batch':>5} " + " ".join(f"{'hidden ' + str(s.hidden_size):>10}" for s in specs)
          + " " + " ".join(f"{'x' + str(s.hidden_size):>6}" for s in specs[1:]))
    for pixels, batch in SIZES:
        medians = []
        for spec in specs:
            torch.manual_seed(0)
            model = build_transformer(spec, sample_size=pixels // 4, interpolation_scale=pe_interpolation(pixels * 8))
            timed = steps(model, pixels, batch, args.length, args.warmup + args.steps, seed=pixels)
            medians.append(statistics.median(timed[args.warmup:]))
        print(f"{pixels:>4} {batch:>5} " + " ".join(f"{m:>10.4f}" for m in medians) + " "
              + " ".join(f"{medians[0] / m:>5.2f}x" for m in medians[1:]))

if __name__ == "__main__":
    main()
