"""Benchmark: images/s of the stage trainer's step (DeepSpeed engine + MLflow logging) against a bare
PyTorch loop over the same model, batches and loss.

    OMP_NUM_THREADS=2 python bench/trainer_overhead.py               # tiny spec, base stage shapes, CPU
    python bench/trainer_overhead.py --spec xl --side 128 --batch 4 --dtype bf16 --device cuda

Both loops run the learned-sigma loss on the same pre-drawn batches with AdamW and gradient clipping;
the trainer's loop adds what the real one adds: ``deepspeed.initialize`` (ZeRO stage of the profile),
EMA and MLflow metrics every ``--log-every`` steps into a temp SQLite store. The two alternate in
blocks so that drifting load on a shared machine hits both alike. Goal: <= 3 % overhead.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pixart.diffusion.losses import q_sample, training_losses
from pixart.models.specs import get_spec
from pixart.models.transformer import build_transformer
from pixart.train.ema import EMA

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_batches(args: argparse.Namespace, caption_channels: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]

    def draw(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return [{"x0": draw(args.batch, 4, args.side, args.side), "noise": draw(args.batch, 4, args.side, args.side),
             "t": torch.randint(0, 1000, (args.batch,), generator=g).to(device),
             "text": draw(args.batch, args.tokens, caption_channels),
             "mask": torch.ones(args.batch, args.tokens, dtype=torch.long, device=device)} for _ in range(args.block)]


def loss_of(model, batch: dict) -> torch.Tensor:
    out = model(q_sample(batch["x0"], batch["noise"], batch["t"]), encoder_hidden_states=batch["text"],
                encoder_attention_mask=batch["mask"], timestep=batch["t"],
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    return training_losses(out, batch["x0"], batch["noise"], batch["t"])["loss"].mean()


def bare_block(model, optimizer, batches: list[dict], clip: float) -> None:
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()


def trainer_block(engine, ema: EMA, run, batches: list[dict], first_step: int, log_every: int) -> None:
    for i, batch in enumerate(batches):
        loss = loss_of(engine, batch)
        engine.backward(loss)
        engine.step()
        ema.update(engine.module)
        step = first_step + i
        if step % log_every == 0:
            run.log_metrics({"loss": loss.item(), "grad_norm": float(engine.get_global_grad_norm() or 0.0)}, step=step)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny")
    parser.add_argument("--side", type=int, default=8, help="latent side (tiny base stage: 32 px / 4 = 8)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--block", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if device.type == "cpu" else "cuda")

    import deepspeed

    from pixart import tracking
    from pixart.settings import Settings
    from pixart.train import distributed

    distributed.init()
    spec = get_spec(args.spec)
    torch.manual_seed(0)
    base = build_transformer(spec, sample_size=args.side, interpolation_scale=1.0).to(device, DTYPES[args.dtype])
    bare, trained = base, copy.deepcopy(base)
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=trained, optimizer=torch.optim.AdamW(trained.parameters(), lr=1e-4), config={
        "train_batch_size": args.batch, "gradient_clipping": 1.0, "zero_optimization": {"stage": args.zero_stage},
        "bf16": {"enabled": args.dtype == "bf16"}, "steps_per_print": 10**9})
    ema = EMA(engine.module, 0.995)
    batches = make_batches(args, spec.caption_channels, device)

    with tempfile.TemporaryDirectory() as tmp:
        tracking.configure(Settings(root=Path(tmp)))
        with tracking.stage_run("bench", {"profile": "bench"}) as run:
            bare_block(bare, bare_opt, batches[:2], 1.0)  # warm-up: allocator, threads, lazy init
            trainer_block(engine, ema, run, batches[:2], 1, args.log_every)
            times: dict[str, list[float]] = {"bare PyTorch": [], "trainer (DeepSpeed + EMA + MLflow)": []}
            for r in range(args.repeats):
                for name, block_times in times.items():
                    sync(device)
                    start = time.perf_counter()
                    if name == "bare PyTorch":
                        bare_block(bare, bare_opt, batches, 1.0)
                    else:
                        trainer_block(engine, ema, run, batches, 1 + r * args.block, args.log_every)
                    sync(device)
                    block_times.append(time.perf_counter() - start)

    images = args.block * args.batch
    rates = {name: images / statistics.median(t) for name, t in times.items()}
    print(f"spec {args.spec}, latent {args.side}x{args.side}, batch {args.batch}, {args.tokens} tokens, "
          f"ZeRO-{args.zero_stage}, {args.dtype} on {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} blocks of {args.block} steps")
    for name, rate in rates.items():
        print(f"  {name:<36} {rate:9.1f} images/s")
    bare_rate, trainer_rate = rates.values()
    print(f"  overhead: {100 * (bare_rate / trainer_rate - 1):+.1f} % (goal <= 3 %)")


if __name__ == "__main__":
    main()
