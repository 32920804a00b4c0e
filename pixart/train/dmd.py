"""DMD: distil the stage's weak input (the teacher) into a one-step generator (Yin et al. 2024), as
PixArt-Sigma did at 512 px.

Three copies of the teacher: the generator G (trained), whose one step at T = t_gen gives
x0 = (z - sqrt(1 - abar_T) eps_G(z, T)) / sqrt(abar_T); the real score (frozen, CFG ``real_cfg``); the
fake score (trained online with the eps loss on detached generator samples, one update per generator
update). The generator's loss is the distribution-matching term plus ``regression_weight`` x a latent MSE
to the teacher's noise -> image pairs (LPIPS weights are not available offline). G and the fake score
are two DeepSpeed engines; the loop is the stage trainer's, randomness keyed by (seed, step) the same way,
and the exported EMA generator is a diffusers pipeline like every stage's.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pixart import tracking
from pixart.config import DMDConfig
from pixart.data.buckets import AspectRatioBatchSampler
from pixart.data.features import FeatureCache
from pixart.data.null_caption import load_null_caption
from pixart.diffusion.losses import q_sample
from pixart.diffusion.one_step import predicted_x0
from pixart.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from pixart.models.builders import with_null_caption
from pixart.train import distributed
from pixart.train.checkpoint import ResumableState, step_tag
from pixart.train.dmd_pairs import TeacherPairs, latent_shape
from pixart.train.ds_config import deepspeed_config
from pixart.train.ema import EMA
from pixart.train.optim import build_optimizer, constant_with_warmup
from pixart.train.trainer import StageJob, denoiser_output, export_ema, global_mean, report_progress
from pixart.train.weak_input import load_transformer

# The distribution-matching timestep range of DMD: t in [0.02, 0.98] x 1000.
DM_T_MIN, DM_T_MAX = 20, 980
FAKE_SCORE_DIR = "fake-score"


def eps(model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The epsilon half of a learned-sigma transformer's output (model: a module or a DeepSpeed engine)."""
    return denoiser_output(model, x_t, t, text, mask)[:, : x_t.shape[1]]


def generate(generator, z: torch.Tensor, t_gen: int, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The one-step generator: x0 from noise z, read as x_T at T = t_gen."""
    t = torch.full((z.shape[0],), t_gen, device=z.device, dtype=torch.long)
    return predicted_x0(z, eps(generator, z, t, text, mask), t)


@torch.no_grad()
def real_score_x0(teacher, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                  null_text: torch.Tensor, null_mask: torch.Tensor, cfg: float) -> torch.Tensor:
    """The frozen teacher's x0 prediction with classifier-free guidance against the null caption."""
    text, mask, null, null_m = with_null_caption(text, mask, null_text, null_mask)
    e = eps(teacher, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, null]), torch.cat([mask, null_m]))
    cond, uncond = e.chunk(2)
    return predicted_x0(x_t, uncond + cfg * (cond - uncond), t)


def distribution_matching_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * mse(x0, stopgrad(x0 - grad)): its gradient in x0 is ``grad`` / numel, with
    grad = (x0_fake - x0_real) / mean|x0 - x0_real| per sample, DMD's normalisation."""
    weight = (x0.detach() - x0_real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
    grad = torch.nan_to_num((x0_fake - x0_real) / weight)
    return 0.5 * F.mse_loss(x0, (x0 - grad).detach())


def dmd_draws(seed: int, step: int, micro_step: int, global_n: int, shape: torch.Size, n_pairs: int,
              rank: int, world: int) -> dict[str, torch.Tensor]:
    """The randomness of one global DMD micro-batch, keyed by (seed, step, micro-step) and sliced by rank,
    as the stage trainer's ``_draws``: generator noise, the distribution-matching t and noise, the fake
    score's t and noise, and which teacher pairs enter the regression loss."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro_step)
    latent = (global_n, *shape)
    draws = {
        "z": torch.randn(latent, generator=g),
        "dm_t": torch.randint(DM_T_MIN, DM_T_MAX + 1, (global_n,), generator=g),
        "dm_noise": torch.randn(latent, generator=g),
        "fake_t": torch.randint(0, NUM_TRAIN_TIMESTEPS, (global_n,), generator=g),
        "fake_noise": torch.randn(latent, generator=g),
        "pairs": torch.randint(0, n_pairs, (global_n,), generator=g),
    }
    return {k: v[rank::world] for k, v in draws.items()}


def dmd_step(generator, fake_score, teacher, cfg: DMDConfig, draws: dict[str, torch.Tensor],
             captions: dict[str, torch.Tensor], null: tuple[torch.Tensor, torch.Tensor],
             pairs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One DMD micro-step: backward + step of the generator engine on distribution matching + regression,
    then of the fake-score engine on the eps loss of the same (detached) samples. ``captions`` and
    ``pairs`` hold text / mask (pairs also noise / latent), on the engines' device; returns the losses."""
    text, mask = captions["text"], captions["mask"]
    x0 = generate(generator, draws["z"], cfg.t_gen, text, mask)
    with torch.no_grad():
        x_t = q_sample(x0.detach(), draws["dm_noise"], draws["dm_t"])
        x0_real = real_score_x0(teacher, x_t, draws["dm_t"], text, mask, *null, cfg.real_cfg)
        x0_fake = predicted_x0(x_t, eps(fake_score, x_t, draws["dm_t"], text, mask), draws["dm_t"])
    dm = distribution_matching_loss(x0, x0_real, x0_fake)
    regression = F.mse_loss(generate(generator, pairs["noise"], cfg.t_gen, pairs["text"], pairs["mask"]),
                            pairs["latent"])
    loss = dm + cfg.regression_weight * regression
    generator.backward(loss)
    generator.step()

    fake_t, fake_noise = draws["fake_t"], draws["fake_noise"]
    fake = F.mse_loss(eps(fake_score, q_sample(x0.detach(), fake_noise, fake_t), fake_t, text, mask), fake_noise)
    fake_score.backward(fake)
    fake_score.step()
    return {"loss": loss.detach(), "distribution_matching": dm.detach(), "regression": regression.detach(),
            "fake_score": fake.detach()}


def _engine(model: torch.nn.Module, job: StageJob, lr: float, world: int):
    import deepspeed

    train_cfg, stage = job.profile.train, job.stage
    optimizer = build_optimizer(model.parameters(), train_cfg, lr)
    engine, _, _, schedule = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=constant_with_warmup(optimizer, stage.warmup_steps),
        config=deepspeed_config(train_cfg, stage.batch_size, world),
    )
    return engine, schedule


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def train_dmd(job: StageJob, pairs_file: Path) -> Path:
    """Run the DMD stage ``job`` (its weak input is the teacher) and export the one-step generator."""
    if job.weak_input is None:
        raise ValueError(f"stages.{job.name}.init_from: DMD needs a teacher (the weak input)")
    cfg: DMDConfig = job.stage.dmd
    rank, world = distributed.init()
    train_cfg, stage = job.profile.train, job.stage
    device = distributed.device()
    torch.manual_seed(train_cfg.seed)

    # the frozen real score runs in the engines' precision: inference only, and half the memory at xl
    dtype = torch.bfloat16 if train_cfg.precision == "bf16" else torch.float32
    teacher = load_transformer(job, job.components).to(device, dtype).eval().requires_grad_(False)
    generator_model = load_transformer(job, job.components)
    if train_cfg.grad_checkpointing:
        generator_model.enable_gradient_checkpointing()
    ema = EMA(generator_model, train_cfg.ema_decay)
    generator, schedule = _engine(generator_model, job, stage.lr, world)
    fake_score, _ = _engine(load_transformer(job, job.components), job, cfg.fake_lr or stage.lr, world)

    cache = FeatureCache(job.features)
    shape = latent_shape(cache)
    pairs = TeacherPairs(pairs_file)
    if pairs.batch(torch.tensor([0]))["latent"].shape[1:] != shape:
        raise ValueError(f"{pairs_file}: pair latents do not match the {tuple(shape)} latents of {job.features}; "
                         "remake the teacher pairs")
    micro = generator.train_micro_batch_size_per_gpu()
    sampler = AspectRatioBatchSampler(cache.ratios, micro * world, seed=train_cfg.seed, drop_last=True)
    null = tuple(t.to(device) for t in load_null_caption(job.features))

    state = ResumableState(job.state_dir, companions=[FAKE_SCORE_DIR])
    start = state.resume(generator, ema, sampler)
    if start:
        fake_score.load_checkpoint(str(job.state_dir / FAKE_SCORE_DIR), tag=state.latest()[0],
                                   load_optimizer_states=True, load_lr_scheduler_states=True)

    batches = itertools.chain.from_iterable(itertools.repeat(sampler))
    run_params = {"stage": stage.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
                  "profile": job.profile_name, "model": job.profile.model, "world_size": world,
                  "resumed_from_step": start, "teacher_pairs": str(pairs_file)}
    with tracking.stage_run(job.name, run_params, enabled=distributed.is_main(), run_file=state.run_file) as run:
        run.set_tags({"data_version": job.data_version, "weak_input": stage.init_from, "one_step": "true"})
        seen, tick = 0, time.perf_counter()
        for step in range(start + 1, stage.steps + 1):
            for micro_step in range(generator.gradient_accumulation_steps()):
                indices = next(batches)
                captions = cache.collate([cache[i] for i in indices[rank::world]])
                draws = _to(dmd_draws(train_cfg.seed, step, micro_step, len(indices), shape, len(pairs), rank, world),
                            device)
                pair = pairs.batch(draws.pop("pairs").cpu())
                pair_captions = cache.collate([cache[int(i)] for i in pair.pop("index")])
                losses = dmd_step(
                    generator, fake_score, teacher, cfg, draws,
                    _to({"text": captions["text"], "mask": captions["mask"]}, device), null,
                    _to({**pair, "text": pair_captions["text"], "mask": pair_captions["mask"]}, device),
                )
                seen += len(indices)
            ema.update(generator.module)

            if step % train_cfg.log_every == 0 or step == stage.steps:
                metrics = {**global_mean(losses, world), "lr": schedule.get_last_lr()[0],
                           "grad_norm": float(generator.get_global_grad_norm() or 0.0),
                           "images_per_s": seen / (time.perf_counter() - tick)}
                run.log_metrics(metrics, step=step)
                report_progress(job.name, step, stage.steps, train_cfg.log_every, metrics)
                seen, tick = 0, time.perf_counter()
            if step % train_cfg.save_every == 0 or step == stage.steps:
                _save(state, generator, fake_score, ema, step, sampler)

        return export_ema(job, generator, ema, run)


def _save(state: ResumableState, generator, fake_score, ema: EMA, step: int, sampler) -> None:
    """The fake score's checkpoint first, the generator's (which writes the manifest of both and moves
    the pointer) last: a kill in between leaves the previous pointer, whose two checkpoints are
    complete. The fake score is a companion of the state: its tags rotate with the generator's."""
    fake_score.save_checkpoint(str(state.dir / FAKE_SCORE_DIR), tag=step_tag(step), save_latest=False)
    state.save(generator, step, ema, {"sampler": sampler.state_dict(), "ema_updates": ema.updates})

