"""Benchmark: one training step of the tiny transformer at its width against the same spec at hidden
128 (its width before 2026-12-02), side by side, at each size the curriculum trains most.

    OMP_NUM_THREADS=2 python bench/tiny_width.py

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
BASELINE_HIDDEN = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--length", type=int, default=42, help="Caption tokens (dense captions: ~40).")
    args = parser.parse_args()

    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer, pe_interpolation

    tiny = get_spec("tiny")
    baseline = dataclasses.replace(tiny, head_dim=BASELINE_HIDDEN // tiny.num_heads)
    print(f"tiny transformer step, caption length {args.length}: hidden {baseline.hidden_size} (baseline) "
          f"against hidden {tiny.hidden_size} (tiny)")
    print(f"{'px':>4} {'batch':>5} {'hidden ' + str(baseline.hidden_size) + ' s':>14} "
          f"{'hidden ' + str(tiny.hidden_size) + ' s':>13} {'speed-up':>9}")
    for pixels, batch in SIZES:
        medians = []
        for spec in (baseline, tiny):
            torch.manual_seed(0)
            model = build_transformer(spec, sample_size=pixels // 4, interpolation_scale=pe_interpolation(pixels * 8))
            timed = steps(model, pixels, batch, args.length, args.warmup + args.steps, seed=pixels)
            medians.append(statistics.median(timed[args.warmup:]))
        print(f"{pixels:>4} {batch:>5} {medians[0]:>14.4f} {medians[1]:>13.4f} {medians[0] / medians[1]:>8.2f}x")


if __name__ == "__main__":
    main()
