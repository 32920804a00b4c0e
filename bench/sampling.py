"""Benchmark: seconds per image of Table 4's five rows, one after the other at the same resolution and
batch: the teacher (DPM-Solver, 20 steps, CFG 4.5), the DMD one-step generator, and LCM in 1, 2 and 4
steps without CFG (paper, 512 px: 1.44 / 0.11 / 0.11 / 0.16 / 0.26 s).

    OMP_NUM_THREADS=2 python bench/sampling.py                                # random tiny-spec pipeline
    python bench/sampling.py --teacher outputs/aes-512 --dmd outputs/dmd --lcm outputs/lcm

Without checkpoints every row uses one randomly initialised pipeline of ``--spec`` (the LCM rows with an
LCMScheduler): time does not depend on the weights. Times cover the whole pipeline call (text encoder,
transformer, VAE decode).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from pixart.diffusion.lcm import sample_lcm
from pixart.diffusion.one_step import one_step_t_gen, sample_one_step
from pixart.diffusion.sampling import sample
from pixart.diffusion.schedule import lcm_scheduler

PROMPTS = [f"a {size} {colour} {shape}" for size in ("small", "large") for colour in ("red", "blue", "green", "yellow")
           for shape in ("circle", "square", "triangle")]


def random_pipeline(spec_name: str, pixels: int):
    """A PixArtSigmaPipeline of ``spec_name`` with random weights and the tiny 'new' VAE."""
    from diffusers import PixArtSigmaPipeline

    from pixart.config import load_profile
    from pixart.diffusion.schedule import dpm_solver_scheduler
    from pixart.models.builders import (
        TINY_VAE_CONFIGS,
        build_text_encoder,
        build_vae,
        packaged_text_encoder,
        train_tokenizer,
    )
    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer, pe_interpolation

    spec = get_spec(spec_name)
    vae = build_vae(TINY_VAE_CONFIGS["new"]).eval()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if spec.text_encoder is None:  # tiny: the packaged encoder its profile names
        text_encoder, tokenizer = packaged_text_encoder(load_profile("tiny")[1].text_encoder.package)
    else:
        tokenizer = train_tokenizer(PROMPTS, Path(tempfile.mkdtemp()), vocab_size=48)
        text_encoder = build_text_encoder(spec, vocab_size=len(tokenizer))
    return PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        transformer=build_transformer(spec, sample_size=pixels // factor, interpolation_scale=pe_interpolation(512)),
        scheduler=dpm_solver_scheduler(),
    )


def seconds_per_image(render, batch: int, repeats: int) -> float:
    render()  # warm-up: first-call allocations and lazy inits
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, help="Teacher pipeline folder (default: random --spec pipeline).")
    parser.add_argument("--dmd", type=Path, help="DMD pipeline folder (default: the teacher's weights).")
    parser.add_argument("--lcm", type=Path, help="LCM pipeline folder (default: the teacher's weights, LCMScheduler).")
    parser.add_argument("--spec", default="tiny")
    parser.add_argument("--pixels", type=int, default=64, help="Image side (tiny DMD stage: 512 x 1/8).")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.5)
    parser.add_argument("--t-gen", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    diffusers_logging.disable_progress_bar()

    from pixart.models.pipeline import load_pipeline

    teacher = load_pipeline(args.teacher) if args.teacher else random_pipeline(args.spec, args.pixels)
    dmd = load_pipeline(args.dmd) if args.dmd else teacher
    if args.lcm:
        lcm = load_pipeline(args.lcm)
    else:
        from diffusers import PixArtSigmaPipeline

        lcm = PixArtSigmaPipeline(**{**teacher.components, "scheduler": lcm_scheduler(50)})
    for pipeline in (teacher, dmd, lcm):
        pipeline.set_progress_bar_config(disable=True)
    t_gen = (one_step_t_gen(args.dmd) if args.dmd else None) or args.t_gen
    prompts = (PROMPTS * args.batch)[: args.batch]
    size = {"height": args.pixels, "width": args.pixels, "max_tokens": 300}
    rows = [(f"teacher  {args.steps} steps CFG {args.cfg}", lambda: sample(teacher, prompts, steps=args.steps,
                                                                            cfg=args.cfg, **size)),
            (f"DMD      1 step (t_gen {t_gen})", lambda: sample_one_step(dmd, prompts, t_gen=t_gen, **size))]
    rows += [(f"LCM      {n} step{'s' if n > 1 else ''}", lambda n=n: sample_lcm(lcm, prompts, steps=n, **size))
             for n in (1, 2, 4)]
    with torch.inference_mode():
        seconds = [seconds_per_image(render, args.batch, args.repeats) for _, render in rows]
    params = sum(p.numel() for p in teacher.transformer.parameters())
    print(f"transformer {params:,} params, {args.pixels} px, batch {args.batch}, {torch.get_num_threads()} threads")
    paper = (1.44, 0.11, 0.11, 0.16, 0.26)
    for (label, _), s, p in zip(rows, seconds, paper, strict=True):
        print(f"{label:<34} {s:.4f} s/image  speed-up {seconds[0] / s:5.1f}x   (paper: {p:.2f} s, {paper[0] / p:4.1f}x)")


if __name__ == "__main__":
    main()
