"""GPU check of the xl spec: one prepared run that measures what the xl stages need from a GPU.

    bash bench/gpu_check.sh                                        # on the GPU machine: one try, 8 minutes
    python bench/gpu_check.py --device cpu --spec debug --small    # CPU dry run of every code path

A GPU machine is lent rarely and briefly, so everything is decided here beforehand and the run cannot
stop half-way: every section is guarded (an error is printed and the next section runs) and time-boxed,
rows are printed and saved as they come, and a summary ends the run. Sections (``--sections``):

    env        versions, GPU, the peak bf16 FLOP/s that MFU divides by
    flops      the analytic FLOP count (pixart.models.flops) against torch's FlopCounterMode
    train      ZeRO-2 bf16 training steps at 1024^2 (the project's DeepSpeed config, CAME, its loss),
               gradient checkpointing on and off: images/s, s/step, peak memory, MFU
    kv         forward + backward with and without KV compression (layers 14-27, 2x2), batch 1
    sampling   teacher (20-step DPM-Solver, CFG 4.5) against DMD (1 step): the denoiser alone
    rehearsal  the xl-rehearsal on CUDA, a command given in GPU_CHECK_REHEARSAL_CMD (off by default)
    summary    merges the sections' results (--results: one JSON per section, written as rows come),
               prints ``GPU_CHECK_SUMMARY {...}`` and writes $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pixart.models.flops import forward_flops, training_flops
from pixart.models.specs import ModelSpec, get_spec

SECTIONS = ("env", "flops", "train", "kv", "sampling", "rehearsal", "summary")
# seconds per section when --time-box is not given (gpu_check.sh passes its own)
DEFAULT_BOX = {"env": 30, "flops": 30, "train": 150, "kv": 120, "sampling": 60, "rehearsal": 120,
               "summary": 20}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GIB = 2**30
OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda's only
# Dense bf16 tensor-core peaks (no sparsity), by a substring of the device name; first match wins.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("A100", 312.0), ("B200", 2250.0), ("L40S", 362.0))


@dataclass(frozen=True)
class Sizes:
    train_side: int  # latent side: 1024 px / 8 (VAE) = 128
    text_tokens: int
    train_batch: int  # micro-batch with gradient checkpointing (xl aes-1024: 384 over 8 GPUs = 48)
    warmup: int
    steps: int
    kv_sides: tuple[int, ...]  # 512 = 4K px, where the paper measures its ~34 %
    kv_repeats: int
    sample_side: int
    sample_steps: int
    sample_repeats: int


FULL = Sizes(train_side=128, text_tokens=300, train_batch=48, warmup=2, steps=5, kv_sides=(64, 128, 256, 512),
             kv_repeats=3, sample_side=128, sample_steps=20, sample_repeats=3)
SMALL = Sizes(train_side=8, text_tokens=16, train_batch=2, warmup=1, steps=2, kv_sides=(8, 16, 32),
              kv_repeats=2, sample_side=16, sample_steps=20, sample_repeats=1)


class SectionTimeout(Exception):
    pass


@dataclass
class Ctx:
    args: argparse.Namespace
    spec: ModelSpec
    sizes: Sizes
    device: torch.device
    dtype: torch.dtype
    results: dict[str, dict] = field(default_factory=dict)
    deadline: float = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, name: str) -> None:
        """Write one section's result now: a hard kill later still leaves the rows measured so far."""
        if self.args.results is None:
            return
        self.args.results.mkdir(parents=True, exist_ok=True)
        tmp = self.args.results / f".{name}.json.tmp"
        tmp.write_text(json.dumps(self.results[name], default=str))
        tmp.replace(self.args.results / f"{name}.json")

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_tflops(self) -> tuple[float | None, str]:
        if self.args.peak_tflops:
            return self.args.peak_tflops, f"peak {self.args.peak_tflops:.0f} TFLOP/s (--peak-tflops)"
        if self.device.type != "cuda":
            return None, "no peak for a CPU: MFU not computed"
        name = torch.cuda.get_device_name(self.device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops, f"peak assumed: {key} dense bf16 {tflops:.0f} TFLOP/s (device name {name!r})"
        return None, f"unknown GPU {name!r}: pass --peak-tflops for MFU"

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / GIB if self.device.type == "cuda" else None

    def total_memory(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.get_device_properties(self.device).total_memory

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def say(*parts: object) -> None:
    print(*parts, flush=True)


def fmt(value: float | None, spec: str, width: int) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


@contextmanager
def time_box(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds``, and again every 5 s in case a library's
    ``except Exception`` swallowed it. Python runs the handler between CUDA calls, which return fast; a
    kernel that hangs is for the shell's hard ``timeout``."""
    def fire(signum, frame):
        raise SectionTimeout(f"time box of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0), 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def tokens_of(spec: ModelSpec, side: int) -> int:
    return (side // spec.patch_size) ** 2


def build(spec: ModelSpec, side: int):
    """A fresh transformer as a from-scratch stage builds it (weak_input.load_transformer): its PE scale
    is the stage's nominal resolution (latent side x 8) / 512."""
    from pixart.models.transformer import build_transformer, pe_interpolation

    torch.manual_seed(0)
    return build_transformer(spec, sample_size=side, interpolation_scale=pe_interpolation(side * 8))


def captions(ctx: Ctx, batch: int, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random T5-like features and an all-valid mask, ``text_tokens`` long: the cache pads to 300."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, ctx.sizes.text_tokens, ctx.spec.caption_channels, generator=g)
    return text.to(ctx.device, ctx.dtype), torch.ones(batch, ctx.sizes.text_tokens, device=ctx.device)


# ---------------------------------------------------------------------------------------------- env


def section_env(ctx: Ctx, res: dict) -> None:
    res.update(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               device=str(ctx.device), dtype=ctx.args.dtype, spec=ctx.spec.name, small=ctx.args.small)
    for package in ("diffusers", "deepspeed", "came_pytorch"):
        try:
            res[package] = getattr(__import__(package), "__version__", "installed")
        except Exception as e:  # noqa: BLE001 - reported; the sections that need it fail on their own
            res[package] = f"missing ({type(e).__name__}: {e})"
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        res.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                   capability=f"{props.major}.{props.minor}", gpus_visible=torch.cuda.device_count(),
                   bf16=torch.cuda.is_bf16_supported())
        try:
            nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int before
            res["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as e:  # noqa: BLE001 - a missing NCCL shows in train, with its error
            res["nccl"] = f"unknown ({type(e).__name__}: {e})"
    res["peak_tflops"], res["peak_assumption"] = ctx.peak_tflops()
    for key, value in res.items():
        if key != "status":
            say(f"  {key:<16} {value}")


# -------------------------------------------------------------------------------------------- flops


def counted_flops(model, x, text, mask, t, *, backward: bool) -> int:
    """FLOPs torch counts in one forward (+ backward). The math SDPA kernel is forced: the kernels the
    CPU and meta devices pick are not in FlopCounterMode's table; the math one runs counted bmm calls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, nullcontext() if backward else torch.no_grad():
        out = model(x, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t).sample
        if backward:
            out.float().square().mean().backward()
    return counter.get_total_flops()


def section_flops(ctx: Ctx, res: dict) -> None:
    from pixart.models.transformer import enable_kv_compression

    # the debug spec with real tensors on CPU, forward and backward; then the spec under test on the
    # meta device at the training size (no memory, no time): the count is checked at xl's own shapes
    checks = [("debug", "cpu", 16, 12, True),
              (ctx.spec.name, "meta", ctx.sizes.train_side, ctx.sizes.text_tokens, False)]
    say(f"  {'spec':<6} {'device':<6} {'tokens':>6} {'text':>5} {'KV':>3} {'analytic GF':>13} "
        f"{'counted GF':>13} {'ratio':>7} {'fwd+bwd / fwd':>13}")
    rows = res.setdefault("checks", [])
    for name, device, side, text_tokens, backward in checks:
        spec = get_spec(name)
        with torch.device(device):
            plain = build(spec, side)
        for layers in ((), spec.kv_compress_layers):
            model = plain
            if layers:
                model = copy.deepcopy(plain)
                enable_kv_compression(model, layers)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, spec.in_channels, side, side, generator=g).to(device)
            text = torch.randn(1, text_tokens, spec.caption_channels, generator=g).to(device)
            mask, t = torch.ones(1, text_tokens, device=device), torch.tensor([500], device=device)
            analytic = sum(forward_flops(spec, tokens_of(spec, side), text_tokens, layers).values())
            counted = counted_flops(model, x, text, mask, t, backward=False)
            both = counted_flops(model, x, text, mask, t, backward=True) if backward else None
            rows.append({"spec": name, "device": device, "tokens": tokens_of(spec, side),
                         "text_tokens": text_tokens, "kv_layers": len(layers), "analytic": analytic,
                         "counted": counted, "ratio": counted / analytic,
                         "fwd_bwd_over_fwd": both / counted if both else None})
            ctx.save("flops")
            say(f"  {name:<6} {device:<6} {rows[-1]['tokens']:>6} {text_tokens:>5} {len(layers):>3} "
                f"{analytic / 1e9:>13.4f} {counted / 1e9:>13.4f} {counted / analytic:>7.4f} "
                f"{fmt(rows[-1]['fwd_bwd_over_fwd'], '.3f', 13)}")
    res["agree"] = all(abs(r["ratio"] - 1) < 0.02 for r in rows)
    say(f"  analytic and counted agree within 2 %: {res['agree']}   (fwd+bwd / fwd: the 3x of MFU, a little "
        "less where an input needs no gradient)")

    parts = res["forward_parts"] = forward_flops(ctx.spec, tokens_of(ctx.spec, ctx.sizes.train_side),
                                                 ctx.sizes.text_tokens)
    total = sum(parts.values())
    say(f"  {ctx.spec.name} forward, latent {ctx.sizes.train_side}^2, {ctx.sizes.text_tokens} text tokens: "
        f"{total / 1e12:.4g} TFLOP per image; by part:")
    say("   " + "  ".join(f"{k} {100 * v / total:.1f}%" for k, v in parts.items() if v))


# -------------------------------------------------------------------------------------------- train


def make_engine(ctx: Ctx, optimizer_name: str, micro_batch: int):
    """The trainer's engine: its optimizer builder and DeepSpeed config, xl's settings (bf16, ZeRO-2)."""
    import deepspeed

    from pixart.config import TrainDefaults
    from pixart.train.ds_config import deepspeed_config
    from pixart.train.optim import build_optimizer

    train_cfg = TrainDefaults(precision=ctx.args.dtype, zero_stage=2, optimizer=optimizer_name)
    model = build(ctx.spec, ctx.sizes.train_side)
    optimizer = build_optimizer(model.parameters(), train_cfg, lr=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=deepspeed_config(train_cfg, micro_batch, world_size=1))
    return engine


def train_step(ctx: Ctx, engine, batch: int) -> torch.Tensor:
    """One step of the trainer's loop on random latents: forward, the project's loss, backward, step."""
    from pixart.diffusion.losses import q_sample, training_losses

    side = ctx.sizes.train_side
    x0 = torch.randn(batch, ctx.spec.in_channels, side, side, device=ctx.device)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=ctx.device)
    text, mask = captions(ctx, batch)
    out = engine(q_sample(x0, noise, t).to(ctx.dtype), encoder_hidden_states=text,
                 encoder_attention_mask=mask, timestep=t,
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    loss = training_losses(out, x0, noise, t)["loss"].mean()
    engine.backward(loss)
    engine.step()
    return loss.detach()


def estimate_gib(ctx: Ctx, batch: int, checkpointing: bool, n_params: int) -> float:
    """pixart.train.memory's per-GPU estimate of this run, to set against the measured peak."""
    from pixart.train import memory

    return memory.estimate(ctx.spec, ctx.sizes.train_side * 8, 2, micro_batch=batch, precision=ctx.args.dtype,
                           grad_checkpointing=checkpointing, n_params=n_params).total / GIB


def phase_batch(ctx: Ctx, checkpointing: bool, n_params: int) -> int:
    """With checkpointing xl's micro-batch; without, the largest up to it that the memory estimate puts
    under 70 % of the GPU (an OOM halves it anyway)."""
    batch = ctx.args.train_batch or ctx.sizes.train_batch
    total = ctx.total_memory()
    if ctx.args.train_batch or checkpointing or total is None:
        return batch
    limit = 0.7 * total / GIB
    return next((b for b in range(batch, 0, -1) if estimate_gib(ctx, b, False, n_params) <= limit), 1)


def timed_steps(ctx: Ctx, engine, batch: int) -> tuple[int, float, float]:
    """(steps, seconds per step, last loss) after the warm-up; fewer steps rather than lose the row to
    the time box."""
    for _ in range(ctx.sizes.warmup):
        train_step(ctx, engine, batch)
    ctx.sync()
    start, done = time.perf_counter(), 0
    while done < ctx.sizes.steps and (done == 0 or ctx.left() > 2.5 * (time.perf_counter() - start) / done):
        loss = train_step(ctx, engine, batch)
        done += 1
    ctx.sync()
    return done, (time.perf_counter() - start) / done, float(loss)


def section_train(ctx: Ctx, res: dict) -> None:
    import logging

    import deepspeed

    from pixart.train import distributed, memory

    deepspeed.utils.logger.setLevel(logging.WARNING)
    distributed.init()
    spec, sizes = ctx.spec, ctx.sizes
    tokens = tokens_of(spec, sizes.train_side)
    peak, assumption = ctx.peak_tflops()
    n_params = memory.count_parameters(spec)
    res.update(tokens=tokens, text_tokens=sizes.text_tokens, latent_side=sizes.train_side, params=n_params,
               peak_tflops=peak, peak_assumption=assumption)

    engine = None
    for name in ("came", "adamw"):  # CAME is xl's optimizer; AdamW only where CAME cannot run
        try:
            engine = make_engine(ctx, name, sizes.train_batch)
            train_step(ctx, engine, 1)  # the first step allocates the optimizer states: the real test
            res["optimizer"] = name
            break
        except (SectionTimeout, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - printed; AdamW is the fallback
            res[f"{name}_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            say(f"  optimizer {name} failed: {res[f'{name}_error']}")
            engine = None
            ctx.free_memory()
    if engine is None:
        raise RuntimeError("no optimizer could train a step")
    say(f"  {spec.name} ({n_params / 1e6:.0f} M params), optimizer {res['optimizer']}, ZeRO-2, "
        f"{ctx.args.dtype}, latent {sizes.train_side}^2 = {tokens} tokens, {sizes.text_tokens} text tokens")
    say(f"  {assumption}")
    say(f"  {'ckpt':<5} {'batch':>5} {'steps':>5} {'s/step':>8} {'img/s':>8} {'peak GiB':>9} {'est GiB':>8} "
        f"{'TFLOP/s':>8} {'MFU':>6} {'HFU':>6} {'loss':>8}")
    rows = res.setdefault("rows", [])
    for checkpointing in (True, False):
        if checkpointing:
            engine.module.enable_gradient_checkpointing()
        else:
            engine.module.disable_gradient_checkpointing()
        label, batch = "on" if checkpointing else "off", phase_batch(ctx, checkpointing, n_params)
        while batch >= 1:
            row = {"grad_checkpointing": checkpointing, "batch": batch}
            ctx.reset_peak()
            try:
                done, seconds, loss = timed_steps(ctx, engine, batch)
            except OutOfMemory:
                engine.zero_grad()
                ctx.free_memory()
                rows.append({**row, "oom": True})
                say(f"  {label:<5} {batch:>5}  out of memory: halving the batch")
                batch //= 2
                continue
            except SectionTimeout:
                raise
            except Exception as e:  # noqa: BLE001 - the other phase may still run
                traceback.print_exc()
                rows.append({**row, "error": f"{type(e).__name__}: {e}"})
                say(f"  {label:<5} {batch:>5}  failed: {rows[-1]['error']}")
                break
            model_flops, hardware_flops = training_flops(spec, tokens, sizes.text_tokens,
                                                         grad_checkpointing=checkpointing)
            achieved = model_flops * batch / seconds / 1e12
            row.update(steps=done, seconds_per_step=seconds, images_per_s=batch / seconds, loss=loss,
                       peak_gib=ctx.peak_gib(),
                       estimate_gib=estimate_gib(ctx, batch, checkpointing, n_params),
                       model_tflops=achieved, mfu=achieved / peak if peak else None,
                       hfu=hardware_flops * batch / seconds / 1e12 / peak if peak else None)
            rows.append(row)
            ctx.save("train")
            say(f"  {label:<5} {batch:>5} {done:>5} {seconds:>8.3f} {row['images_per_s']:>8.2f} "
                f"{fmt(row['peak_gib'], '.1f', 9)} {row['estimate_gib']:>8.1f} {achieved:>8.2f} "
                f"{fmt(row['mfu'], '.1%', 6)} {fmt(row['hfu'], '.1%', 6)} {loss:>8.4f}")
            break
    say("  MFU: 3 forwards of model FLOPs per image x images/s / peak; HFU adds the forward that gradient "
        "checkpointing recomputes; est: pixart.train.memory.estimate")


# ----------------------------------------------------------------------------------------------- kv


def fwd_bwd_seconds(ctx: Ctx, models: list, side: int, repeats: int) -> list[float]:
    """Median seconds of one forward + backward per model, batch 1, after a warm-up round; the models
    alternate within each round, so that drift hits both alike."""
    x = torch.randn(1, ctx.spec.in_channels, side, side, device=ctx.device, dtype=ctx.dtype)
    text, mask = captions(ctx, 1)
    t = torch.tensor([500], device=ctx.device)
    times: list[list[float]] = [[] for _ in models]
    for i in range(1 + repeats):
        for model, own in zip(models, times, strict=True):
            ctx.sync()
            start = time.perf_counter()
            out = model(x, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t).sample
            out.float().square().mean().backward()
            ctx.sync()
            if i:
                own.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    return [statistics.median(own) for own in times]


def section_kv(ctx: Ctx, res: dict) -> None:
    from pixart.models.transformer import enable_kv_compression
    from pixart.train import memory

    spec, text_tokens, repeats = ctx.spec, ctx.sizes.text_tokens, ctx.sizes.kv_repeats
    plain = build(spec, ctx.sizes.train_side)
    # the KV stages' path: an uncompressed weak input, compression switched on at the averaging init
    compressed = copy.deepcopy(plain)
    enable_kv_compression(compressed, spec.kv_compress_layers)
    models = [m.to(ctx.device, ctx.dtype).train() for m in (plain, compressed)]
    total = ctx.total_memory()
    res["kv_layers"] = list(spec.kv_compress_layers)
    first, last_layer = spec.kv_compress_layers[0], spec.kv_compress_layers[-1]
    say(f"  {spec.name}, KV layers {first}-{last_layer} of {spec.depth}, batch 1, {ctx.args.dtype}, "
        f"median of {repeats} after a warm-up")
    say(f"  {'latent':>7} {'tokens':>6} {'px':>5} {'ckpt':>4} {'plain ms':>9} {'KV ms':>9} {'saving':>7} "
        f"{'FLOP saving':>11} {'peak GiB':>9}")
    rows = res.setdefault("rows", [])
    last: tuple[float, int] | None = None  # (seconds of one round at the last size, its FLOPs)
    for side in ctx.args.kv_sides or ctx.sizes.kv_sides:
        tokens = tokens_of(spec, side)
        flops = sum(forward_flops(spec, tokens, text_tokens).values())
        flops_kv = sum(forward_flops(spec, tokens, text_tokens, spec.kv_compress_layers).values())
        # checkpointing where the activations alone would crowd the GPU (4K px), for both models alike
        activations = memory.activation_bytes(spec, tokens, 1, ctx.args.dtype, False)
        checkpointing = total is not None and activations > 0.6 * total
        row = {"latent_side": side, "tokens": tokens, "pixels": side * 8, "flop_saving": 1 - flops_kv / flops,
               "grad_checkpointing": checkpointing}
        head = f"  {side:>7} {tokens:>6} {side * 8:>5}"
        if last is not None:
            needed = last[0] * flops / last[1] * (1 + repeats) * (4 / 3 if checkpointing else 1)
            if needed > ctx.left() - 5:
                rows.append({**row, "skipped": f"needs ~{needed:.0f} s, {ctx.left():.0f} s left"})
                say(f"{head}  skipped: {rows[-1]['skipped']}")
                continue
        for m in models:
            if checkpointing:
                m.enable_gradient_checkpointing()
            else:
                m.disable_gradient_checkpointing()
        ctx.reset_peak()
        try:
            start = time.perf_counter()
            plain_s, kv_s = fwd_bwd_seconds(ctx, models, side, repeats)
            last = ((time.perf_counter() - start) / (1 + repeats), flops)
        except SectionTimeout:
            raise
        except Exception as e:  # noqa: BLE001 - OOM above all: the next size may still fit
            for m in models:
                m.zero_grad(set_to_none=True)
            ctx.free_memory()
            oom = isinstance(e, OutOfMemory)
            rows.append({**row, "oom": oom, "error": None if oom else f"{type(e).__name__}: {e}"})
            say(f"{head}  {'out of memory' if oom else rows[-1]['error']}: skipped")
            continue
        row.update(plain_ms=1e3 * plain_s, kv_ms=1e3 * kv_s, saving=1 - kv_s / plain_s,
                   peak_gib=ctx.peak_gib())
        rows.append(row)
        ctx.save("kv")
        say(f"{head} {'on' if checkpointing else 'off':>4} {row['plain_ms']:>9.1f} {row['kv_ms']:>9.1f} "
            f"{row['saving']:>7.1%} {row['flop_saving']:>11.1%} {fmt(row['peak_gib'], '.1f', 9)}")
    say("  paper: ~34 % less training and inference time at high resolution")


# ----------------------------------------------------------------------------------------- sampling


def section_sampling(ctx: Ctx, res: dict) -> None:
    from pixart.diffusion.one_step import predicted_x0
    from pixart.diffusion.sampling import DEFAULT_CFG
    from pixart.diffusion.schedule import dpm_solver_scheduler

    spec, side, steps, cfg, t_gen = ctx.spec, ctx.sizes.sample_side, ctx.sizes.sample_steps, DEFAULT_CFG, 400
    model = build(spec, side).to(ctx.device, ctx.dtype).eval()
    text, mask = captions(ctx, 1)
    null, _ = captions(ctx, 1, seed=2)  # stands in for the null caption's features: the same cost
    pair_text, pair_mask = torch.cat([null, text]), torch.cat([mask, mask])
    channels = spec.in_channels

    def eps(x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        out = model(x.to(ctx.dtype), encoder_hidden_states=hidden, encoder_attention_mask=m,
                    timestep=t.expand(x.shape[0])).sample
        return out[:, :channels].float()  # learned sigma: samplers read epsilon only, as the pipeline does

    def teacher() -> torch.Tensor:
        scheduler = dpm_solver_scheduler()
        scheduler.set_timesteps(steps, device=ctx.device)
        x = torch.randn(1, channels, side, side, device=ctx.device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            uncond, cond = eps(torch.cat([x, x]), t, pair_text, pair_mask).chunk(2)
            x = scheduler.step(uncond + cfg * (cond - uncond), t, x).prev_sample
        return x

    def dmd() -> torch.Tensor:
        z = torch.randn(1, channels, side, side, device=ctx.device)
        return predicted_x0(z, eps(z, torch.tensor([t_gen], device=ctx.device), text, mask), t_gen)

    res.update(latent_side=side, steps=steps, cfg=cfg, t_gen=t_gen,
               timed="the denoiser directly: DPM-Solver++ (pixart.diffusion.schedule.dpm_solver_scheduler) "
                     "with CFG on a doubled batch; DMD one call + pixart.diffusion.one_step.predicted_x0; "
                     "no text encoder, no VAE decode (no SDXL VAE weights here)")
    say(f"  {spec.name} transformer alone, random weights, batch 1, latent {side}^2 ({side * 8} px), "
        f"{ctx.sizes.text_tokens} text tokens, {ctx.args.dtype}, median of {ctx.sizes.sample_repeats}")
    with torch.inference_mode():
        for name, render, label in (("teacher", teacher, f"teacher {steps} steps CFG {cfg}"),
                                    ("dmd", dmd, f"DMD 1 step (t_gen {t_gen})")):
            render()  # warm-up
            times = []
            for _ in range(ctx.sizes.sample_repeats):
                ctx.sync()
                start = time.perf_counter()
                x = render()
                ctx.sync()
                times.append(time.perf_counter() - start)
            res[f"{name}_s"], res[f"{name}_finite"] = statistics.median(times), bool(torch.isfinite(x).all())
            ctx.save("sampling")
            say(f"  {label:<26} {res[f'{name}_s']:.4f} s")
    res["ratio"] = res["teacher_s"] / res["dmd_s"]
    say(f"  ratio {res['ratio']:.1f}x   (paper, 512 px, whole pipeline on A100: 1.44 s vs 0.11 s, 13x)")
    say(f"  timed: {res['timed']}")


# ---------------------------------------------------------------------------------------- rehearsal


def section_rehearsal(ctx: Ctx, res: dict) -> None:
    # HOOK for the xl-rehearsal on CUDA: whoever wires its quick profile sets GPU_CHECK_REHEARSAL=1 and
    # GPU_CHECK_REHEARSAL_CMD (a dvc repro of a subset, say); this runs it with PIXART_DEVICE=cuda under
    # GPU_CHECK_REHEARSAL_TIMEOUT (default 90 s).
    command = os.environ.get("GPU_CHECK_REHEARSAL_CMD", "")
    if os.environ.get("GPU_CHECK_REHEARSAL") != "1" or not command:
        res["status"] = "skipped"
        say("  skipped: set GPU_CHECK_REHEARSAL=1 and GPU_CHECK_REHEARSAL_CMD to run the rehearsal")
        return
    timeout = min(float(os.environ.get("GPU_CHECK_REHEARSAL_TIMEOUT", "90")), ctx.left() - 3)
    # the command starts its own processes (a launcher, stages): this process's rank variables are not theirs
    ours = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in ours} | {"PIXART_DEVICE": "cuda"}
    res.update(command=command, timeout_s=timeout)
    say(f"  $ {command}   (PIXART_DEVICE=cuda, timeout {timeout:.0f} s)")
    start = time.monotonic()
    process = subprocess.Popen(["bash", "-c", command], env=env, start_new_session=True)
    try:
        res["rc"] = process.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, SectionTimeout):
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the command and everything it started
        except ProcessLookupError:
            pass
        process.wait()
        res["rc"] = "timeout"
    res["rehearsal_s"] = time.monotonic() - start
    say(f"  rehearsal rc {res['rc']} after {res['rehearsal_s']:.0f} s")
    if res["rc"] != 0:
        raise RuntimeError(f"rehearsal command ended with {res['rc']}")


# ------------------------------------------------------------------------------------------ summary


def pick(row: dict, *keys: str) -> dict:
    return {k: row.get(k) for k in keys}


def section_summary(ctx: Ctx, res: dict) -> None:
    results = {k: v for k, v in ctx.results.items() if k != "summary"}
    if ctx.args.results is not None:  # sections run by gpu_check.sh's other processes
        for path in sorted(ctx.args.results.glob("*.json")):
            results.setdefault(path.stem, json.loads(path.read_text()))
    for r in results.values():
        if r.get("status") == "running":
            r["status"] = "killed"  # its process ended inside the section: the hard timeout, or a crash
    env, flops, train, kv, sampling, rehearsal = (results.get(k, {}) for k in SECTIONS[:-1])
    say(f"  {'section':<10} {'status':<8} {'seconds':>7}")
    for name in SECTIONS[:-1]:
        r = results.get(name, {})
        status, seconds = r.get("status", "not run"), fmt(r.get("seconds"), ".0f", 7)
        say(f"  {name:<10} {status:<8} {seconds}  {r.get('error', '')}")
    summary = {
        **pick(env, "gpu", "torch", "deepspeed", "peak_tflops"), "flops_agree": flops.get("agree"),
        "optimizer": train.get("optimizer"),
        "train": [pick(r, "grad_checkpointing", "batch", "seconds_per_step", "images_per_s", "peak_gib",
                       "estimate_gib", "mfu", "hfu", "loss")
                  for r in train.get("rows", []) if "images_per_s" in r],
        "kv": [pick(r, "tokens", "pixels", "grad_checkpointing", "plain_ms", "kv_ms", "saving", "flop_saving",
                    "oom", "error", "skipped")
               for r in kv.get("rows", [])],
        "sampling": pick(sampling, "teacher_s", "dmd_s", "ratio"),
        "rehearsal": rehearsal.get("rc", rehearsal.get("status")),
        "status": {name: results.get(name, {}).get("status", "not run") for name in SECTIONS[:-1]},
    }
    say(f"GPU_CHECK_SUMMARY {json.dumps(summary, default=str)}")
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_check.json"
        path.write_text(json.dumps({"summary": summary, "sections": results}, indent=1, default=str))
        say(f"  wrote {path}")


# --------------------------------------------------------------------------------------------- main

RUNNERS = {"env": section_env, "flops": section_flops, "train": section_train, "kv": section_kv,
           "sampling": section_sampling, "rehearsal": section_rehearsal, "summary": section_summary}


def timed_out(e: BaseException) -> bool:
    """Whether ``e`` is the time box, wrapped by a library (diffusers' lazy imports wrap theirs)."""
    for _ in range(20):
        if e is None:
            return False
        if isinstance(e, SectionTimeout) or "time box of" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def run_section(ctx: Ctx, name: str) -> None:
    say(f"\n== {name} ==")
    res = ctx.results[name] = {"status": "running"}  # what a hard kill leaves: the summary says "killed"
    if name != "summary":
        ctx.save(name)
    box = ctx.args.time_box or DEFAULT_BOX[name]
    start = time.monotonic()
    ctx.deadline = start + box
    try:
        with time_box(box):
            RUNNERS[name](ctx, res)
        if res["status"] == "running":
            res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - the point of a section: the next one runs
        if not isinstance(e, SectionTimeout):
            traceback.print_exc()
        res.update(status="timeout" if timed_out(e) else "error", error=f"{type(e).__name__}: {e}")
        say(f"  {name} {res['status']}: {res['error']}")
    res["seconds"] = time.monotonic() - start
    if name != "summary":
        ctx.save(name)
    ctx.free_memory()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--spec", default="xl")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--small", action="store_true", help="tiny sizes: a dry run of every code path")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--time-box", type=float, help="seconds for each section (default: per section)")
    parser.add_argument("--results", type=Path,
                        help="folder of one JSON per section, shared by a run's processes")
    parser.add_argument("--train-batch", type=int,
                        help="micro-batch of both training phases (default: 48 with checkpointing, without "
                             "it the largest that fits)")
    parser.add_argument("--kv-sides", type=int, nargs="+",
                        help="latent sides of the KV table (default 64 128 256 512)")
    parser.add_argument("--peak-tflops", type=float,
                        help="peak dense bf16 TFLOP/s, for a GPU not in the table")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"--sections: unknown {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if args.device.startswith("cuda") else "cpu")
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()  # the bf16 cast warns about an empty list of fp32 modules
    except ImportError as e:  # env reports it; the summary must run all the same
        say(f"diffusers: {e}")
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:  # DeepSpeed puts its engine on LOCAL_RANK's GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    ctx = Ctx(args=args, spec=get_spec(args.spec), sizes=SMALL if args.small else FULL, device=device,
              dtype=DTYPES[args.dtype])
    for name in sections:
        run_section(ctx, name)
    sys.exit(0)


if __name__ == "__main__":
    main()
