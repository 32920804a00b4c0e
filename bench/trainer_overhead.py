"""Benchmark: the stage trainer itself (``pixart.train.trainer.train``: DeepSpeed engine, EMA, MLflow
metrics) against a bare PyTorch loop over the same model, feature cache, randomness, loss and steps.

    OMP_NUM_THREADS=2 python bench/trainer_overhead.py                 # tiny profile, base stage, CPU
    python bench/trainer_overhead.py --profile smoke --steps 60        # the debug spec: fixed costs dominate
    OMP_NUM_THREADS=1 python bench/trainer_overhead.py --breakdown     # where each loop's step time goes
    python bench/trainer_overhead.py --cprofile 25                     # the trainer's 25 costliest calls

Set-up, in a temp folder, as the curriculum's stages leave it: a generated dataset, the profile's
(untrained) VAE and text encoder, the stage's feature cache and null caption, an MLflow SQLite store.
Each repeat runs ``train`` on a fresh state folder and the bare loop (AdamW, the lr warm-up, gradient
clipping; no DeepSpeed, EMA or logging), in alternating order so that drifting load on a shared
machine hits both alike. Only the steps after ``--skip`` are timed, from the first batch of the
first timed step to the end of the last step: the engine's set-up, the MLflow run and the export are
paid once per stage, not per step. Both loops draw the same batches and noise, so their last losses
agree (printed) and the timing compares like with like. The overhead is the median over repeats of
each repeat's trainer/bare ratio, in wall and in CPU time. Goal: <= 3 %.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch

# (wall, CPU) times of the loop being timed: one per step start, then the loop's end. On a shared
# machine wall time follows the other processes' load; CPU time (every thread of this process, MLflow's
# sender and system-metrics sampler included) follows it less. Under heavy load, OMP_NUM_THREADS=1:
# a two-thread step whose second thread is descheduled waits for it (seen: 60x slower steps).
_marks: list[tuple[float, float]] = []


def _mark() -> None:
    _marks.append((time.perf_counter(), time.process_time()))


def build_world(root: Path, profile_name: str, stage_name: str, n_images: int):
    """A dataset, the stage's frozen components and its feature cache under ``root``; the profile."""
    from pixart.config import load_profile
    from pixart.data.features import build_feature_cache
    from pixart.data.format import load_dataset
    from pixart.data.generate import generate_dataset
    from pixart.data.null_caption import save_null_caption
    from pixart.models.builders import (
        TINY_VAE_CONFIGS,
        build_text_encoder,
        build_vae,
        load_tokenizer,
        null_caption_embedding,
        packaged_model_path,
        train_tokenizer,
    )
    from pixart.models.specs import get_spec
    from pixart.train.components import Components, link_tree

    _, profile = load_profile(profile_name)
    stage = profile.stages[stage_name]
    pixels = profile.pixels(stage)
    generate_dataset(root / "data", n=n_images, seed=0, resolution_px=pixels)
    vae_dir, text_dir = root / f"vae-{stage.vae}", root / "text-encoder"
    build_vae(TINY_VAE_CONFIGS[profile.vaes[stage.vae].config], seed=0).save_pretrained(vae_dir)
    if profile.text_encoder.package is not None:
        source = packaged_model_path(profile.text_encoder.package)
        link_tree(source, text_dir / "text_encoder")
        link_tree(source, text_dir / "tokenizer")
    else:
        captions = [c for e in load_dataset(root / "data") for c in (e.prompt, e.sharegpt4v) if c]
        tokenizer = train_tokenizer(captions, text_dir / "tokenizer", profile.text_encoder.vocab_size)
        build_text_encoder(get_spec(profile.model), vocab_size=len(tokenizer)).save_pretrained(text_dir / "text_encoder")
    encoder, tokenizer = build_text_encoder(text_dir / "text_encoder"), load_tokenizer(text_dir / "tokenizer")
    features = build_feature_cache(root / "data", root / "features", vae=build_vae(vae_dir).eval(),
                                   text_encoder=encoder, tokenizer=tokenizer, resolution_px=pixels,
                                   caption_kind=stage.caption, max_tokens=stage.max_tokens)
    save_null_caption(features, *null_caption_embedding(encoder, tokenizer, stage.max_tokens))
    return profile, features, Components(vae=vae_dir, text_encoder=text_dir)


def make_job(root: Path, run: int, profile_name: str, profile, stage_name: str, features: Path, components,
             steps: int, batch: int | None, log_every: int | None, zero_stage: int | None):
    from pixart.train.job import StageJob

    overrides = {"log_every": log_every, "zero_stage": zero_stage}
    train = profile.train.model_copy(update={"save_every": 10**9, **{k: v for k, v in overrides.items() if v is not None}})
    stage = profile.stages[stage_name]
    stage = stage.model_copy(update={"steps": steps, "init_from": None, "batch_size": batch or stage.batch_size})
    profile = profile.model_copy(update={"train": train})
    return StageJob(name=stage_name, profile_name=profile_name, profile=profile, stage=stage, features=features,
                    components=components, out_dir=root / f"outputs/{stage_name}-{run}",
                    state_dir=root / f"state/{run}", data_version="bench")


def run_trainer(job) -> float:
    """``train(job)``, timed from its first batch to the end of its loop; its last logged loss."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pixart.stage_info import StageInfo
    from pixart.train import trainer

    real_batches, real_export = trainer._endless, trainer.StageTrainer.export

    def batches(sampler):
        for indices in real_batches(sampler):
            _mark()
            yield indices

    def export(self, run):
        _mark()
        return real_export(self, run)

    trainer._endless, trainer.StageTrainer.export = batches, export
    try:
        out = trainer.train(job)
    finally:
        trainer._endless, trainer.StageTrainer.export = real_batches, real_export
    run_id = StageInfo.read(out).mlflow_run_id
    history = MlflowClient(tracking_uri=mlflow.get_tracking_uri()).get_metric_history(run_id, "loss")
    return max(history, key=lambda m: m.step).value


def run_bare(job) -> float:
    """The same steps as ``train`` in plain PyTorch; its last loss."""
    from pixart.data.buckets import AspectRatioBatchSampler
    from pixart.data.features import FeatureCache
    from pixart.data.null_caption import load_null_caption
    from pixart.diffusion.caption_dropout import drop_captions
    from pixart.diffusion.losses import q_sample, training_losses
    from pixart.train.optim import build_optimizer, constant_with_warmup
    from pixart.train.trainer import _draws, _endless, _pad_to, denoiser_output
    from pixart.train.weak_input import load_transformer

    train, stage = job.profile.train, job.stage
    torch.manual_seed(train.seed)
    model = load_transformer(job, job.components).train()
    optimizer = build_optimizer(model.parameters(), train, stage.lr)
    schedule = constant_with_warmup(optimizer, stage.warmup_steps)
    cache = FeatureCache(job.features)
    batches = _endless(AspectRatioBatchSampler(cache.ratios, stage.batch_size, seed=train.seed, drop_last=True))
    null_text, null_mask = load_null_caption(job.features)
    scaling = job.components.scaling_factor()
    for step in range(1, stage.steps + 1):
        _mark()
        indices = next(batches)
        batch = cache.collate([cache[i] for i in indices])
        draws = _draws(train.seed, step, 0, len(indices), batch["latent_mean"].shape[1:], train.caption_dropout, 0, 1)
        x0 = (batch["latent_mean"] + batch["latent_std"] * draws["latent"]) * scaling
        text, mask = drop_captions(batch["text"], batch["mask"], *_pad_to(null_text, null_mask, batch["mask"]),
                                   draws["drop"])
        out = denoiser_output(model, q_sample(x0, draws["noise"], draws["t"]), draws["t"], text, mask)
        loss = training_losses(out, x0, draws["noise"], draws["t"], min_snr_gamma=train.min_snr_gamma)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        schedule.step()
    _mark()
    return loss.item()


# what --breakdown times: (owner, attribute, label); the trainer's extras are engine.backward beyond
# autograd (none: ZeRO's hooks run inside autograd), engine.step beyond AdamW.step, the EMA and logging
def _breakdown_targets() -> list[tuple[object, str, str]]:
    from deepspeed.runtime.engine import DeepSpeedEngine

    from pixart import tracking
    from pixart.data.features import FeatureCache
    from pixart.models.transformer import PixArtSigmaTransformer
    from pixart.train.ema import EMA

    return [(FeatureCache, "collate", "collate"), (PixArtSigmaTransformer, "forward", "transformer forward"),
            (torch.autograd, "backward", "autograd backward (+ hooks)"), (DeepSpeedEngine, "backward", "engine.backward"),
            (torch.nn.utils, "clip_grad_norm_", "clip_grad_norm_"), (torch.optim.AdamW, "step", "AdamW.step"),
            (DeepSpeedEngine, "step", "engine.step"), (DeepSpeedEngine, "get_global_grad_norm", "get_global_grad_norm"),
            (EMA, "update", "EMA.update"), (tracking.StageRun, "log_metrics", "log_metrics")]


def breakdown(fn, job, skip: int) -> dict[str, float]:
    """CPU milliseconds per timed step of each of ``_breakdown_targets`` in one run of ``fn`` (this
    thread's CPU time: with OMP_NUM_THREADS=1 all of torch's work runs on it, and other processes'
    load does not count), and the process's CPU total (MLflow's threads included)."""
    spent: dict[str, float] = {}
    originals = []
    for owner, attribute, label in _breakdown_targets():
        real = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)

        def wrapper(*args, _real=real, _label=label, **kwargs):
            if len(_marks) <= skip:  # warm-up steps are not timed
                return _real(*args, **kwargs)
            start = time.thread_time()
            try:
                return _real(*args, **kwargs)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.thread_time() - start

        originals.append((owner, attribute, real))
        setattr(owner, attribute, staticmethod(wrapper) if isinstance(real, staticmethod) else wrapper)
    try:
        _, cpu_seconds, _ = timed(fn, job, skip)
    finally:
        for owner, attribute, real in originals:
            setattr(owner, attribute, real)
    steps = job.stage.steps - skip
    return {**{label: 1000 * v / steps for label, v in spent.items()}, "total": 1000 * cpu_seconds / steps}


def timed(fn, job, skip: int) -> tuple[float, float, float]:
    """Wall and CPU seconds of ``fn(job)``'s steps after the first ``skip``, and its last loss."""
    _marks.clear()
    loss = fn(job)
    if len(_marks) != job.stage.steps + 1:
        raise RuntimeError(f"{fn.__name__}: {len(_marks)} timestamps for {job.stage.steps} steps (one micro-step each)")
    return _marks[-1][0] - _marks[skip][0], _marks[-1][1] - _marks[skip][1], loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", help="params.yaml profile (tiny: the CPU curriculum's sizes)")
    parser.add_argument("--stage", default="base")
    parser.add_argument("--steps", type=int, default=40, help="steps per run, --skip of them untimed")
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps not timed (allocator, lazy init)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the stage's)")
    parser.add_argument("--log-every", type=int, default=None, help="default: the profile's")
    parser.add_argument("--zero-stage", type=int, default=None, help="default: the profile's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=256, help="generated images in the feature cache")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the parts of each loop's step instead (CPU time; use OMP_NUM_THREADS=1)")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="profile one trainer run instead and print its N most expensive calls")
    args = parser.parse_args()
    from pixart.settings import Settings, apply_stage_env

    # the project's environment, as a stage gets it, before mlflow is imported: DeepSpeed's shm comm
    # op then compiles once per machine into the project's cache (~95 s), not once per run
    apply_stage_env()
    from pixart import tracking

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracking.configure(Settings(root=root))
        profile, features, components = build_world(root, args.profile, args.stage, args.images)

        def job(run: int):
            return make_job(root, run, args.profile, profile, args.stage, features, components, args.steps,
                            args.batch, args.log_every, args.zero_stage)

        timed(run_bare, job(0), args.skip)  # warm-up: DeepSpeed's first initialize, thread pools
        timed(run_trainer, job(0), args.skip)
        if args.breakdown:
            runs: dict[str, list[dict[str, float]]] = {"bare PyTorch": [], "trainer.train": []}
            for r in range(1, args.repeats + 1):
                runs["bare PyTorch"].append(breakdown(run_bare, job(r), args.skip))
                runs["trainer.train"].append(breakdown(run_trainer, job(r), args.skip))
            labels = [label for _, _, label in _breakdown_targets()] + ["total"]
            parts = {name: {label: statistics.median([run[label] for run in block]) for label in labels if label in block[0]}
                     for name, block in runs.items()}
            print(f"CPU ms per step, median of {args.repeats} runs of {args.steps - args.skip} timed steps "
                  f"({args.profile} {args.stage}, batch {job(0).stage.batch_size}, {torch.get_num_threads()} threads)")
            print(f"  {'':<30}{'bare PyTorch':>14}{'trainer.train':>15}")
            for label in labels:
                row = [parts[name].get(label) for name in parts]
                print(f"  {label:<30}" + "".join(f"{v:>14.2f} " if v is not None else f"{'-':>14} " for v in row))
            return
        if args.cprofile:
            profiler = cProfile.Profile()
            profiler.enable()
            timed(run_trainer, job(-1), args.skip)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.cprofile)
            return
        names = ("bare PyTorch", "trainer.train")
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        losses: dict[str, float] = {}
        for r in range(1, args.repeats + 1):
            order = list(zip(names, (run_bare, run_trainer), strict=True))
            for name, fn in order if r % 2 else order[::-1]:
                seconds, cpu_seconds, losses[name] = timed(fn, job(r), args.skip)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
            print(f"repeat {r}: " + "  ".join(f"{name} {wall[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU"
                                                for name in names), flush=True)

    j = job(0)
    images = (args.steps - args.skip) * j.stage.batch_size
    print(f"profile {args.profile}, stage {args.stage} ({profile.model} spec, {profile.pixels(j.stage)} px, batch "
          f"{j.stage.batch_size}, {j.stage.max_tokens} tokens, ZeRO-{j.profile.train.zero_stage}, {profile.train.precision}"
          f", log every {j.profile.train.log_every}), {torch.get_num_threads()} threads; {args.steps - args.skip} "
          f"timed steps per run, {args.repeats} runs each, interleaved")
    for name in names:
        print(f"  {name:<16} {images / statistics.median(wall[name]):8.1f} images/s  wall s {' '.join(f'{t:.2f}' for t in wall[name])}"
              f"  CPU s {' '.join(f'{t:.2f}' for t in cpu[name])}  last loss {losses[name]:.5f}")
    for label, block in (("wall", wall), ("CPU", cpu)):
        ratios = [t / b for t, b in zip(block["trainer.train"], block["bare PyTorch"], strict=True)]
        print(f"  overhead ({label} time): median per-repeat ratio {100 * (statistics.median(ratios) - 1):+.1f} %"
              f" (ratios {' '.join(f'{r:.3f}' for r in ratios)}); ratio of medians "
              f"{100 * (statistics.median(block['trainer.train']) / statistics.median(block['bare PyTorch']) - 1):+.1f} %"
              f" (goal <= 3 %)")


if __name__ == "__main__":
    main()
