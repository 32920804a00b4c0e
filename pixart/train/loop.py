"""The training loop of every trainer, written once: process group, DeepSpeed engines, resume, the
MLflow run, log and save cadence, EMA, the crash drill and the export.

A variant states only what differs, in the way torchtitan's Flux trainer overrides a few methods of its
base: ``build`` (its models and engines), ``micro_step`` (its batch, loss and update) and ``export``;
``run_params``/``run_tags`` add to its MLflow run, ``client_state``/``restore`` carry its data position
through a checkpoint. The variants: ``pixart.train.trainer.StageTrainer`` (a curriculum stage),
``pixart.train.dmd.DMDTrainer`` (one-step distillation), ``pixart.train.vae.VAETrainer`` (tiny's VAEs).

Randomness is drawn from generators keyed by (seed, step, micro-step) (``keyed_generator``), whole for
the global batch and sliced by rank: the same numbers on one process or many, and after a resume,
with no RNG state to checkpoint. So every variant resumes bitwise, and the crash drill
(``PIXART_SIGKILL_AFTER_STEP``) checks that for each.

The last step is checkpointed like every ``save_every``-th before the export: a stage that fails to
export or register (disk full, MLflow down) loses no step, and its re-run resumes at the last step,
trains nothing, and exports and registers.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from pixart import tracking
from pixart.config import TrainDefaults
from pixart.train import distributed
from pixart.train.checkpoint import ResumableState, step_tag
from pixart.train.ds_config import deepspeed_config
from pixart.train.ema import EMA

# Crash drill (tests, retry rehearsals): the process SIGKILLs itself right after this step. Read when a
# stage starts, not on import: a `pixart worker` imports this module once for every stage it forks.
SIGKILL_AFTER_STEP_ENV = "PIXART_SIGKILL_AFTER_STEP"


def keyed_generator(seed: int, step: int, micro_step: int) -> torch.Generator:
    """The generator of one global micro-batch's randomness, keyed by (seed, step, micro-step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro_step)


def rank_slice(draws: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's share of draws made for the global micro-batch."""
    return {k: v[rank::world] for k, v in draws.items()}


def global_mean(losses: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """The last micro-batch's losses averaged over ranks: the global batch's, whatever the world size."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return dict(zip(losses, values.tolist(), strict=True))


def report_progress(name: str, step: int, steps: int, log_every: int, metrics: dict[str, float]) -> None:
    """About twenty console lines per stage (rank 0): what `dvc repro` shows while a stage trains."""
    every = log_every * max(1, steps // (20 * log_every))
    if distributed.is_main() and (step % every == 0 or step == steps):
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "lr")
        print(f"{name} step {step}/{steps}  {shown}", flush=True)


class Trainer:
    """The loop. ``build`` sets ``self.engine`` (the trained DeepSpeed engine), and may set
    ``self.ema`` (what the export reads) and ``self.companions`` (name -> engine saved and resumed
    with it, such as DMD's fake score)."""

    def __init__(self, name: str, train: TrainDefaults, steps: int, batch_size: int, state_dir: Path) -> None:
        self.name, self.train, self.steps, self.batch_size = name, train, steps, batch_size
        self.state_dir = state_dir
        self.ema: EMA | None = None
        self.companions: dict[str, Any] = {}

    # --- what a variant states ------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def micro_step(self, step: int, micro_step: int) -> dict[str, torch.Tensor]:
        """One micro-batch: draws, forward, backward and the engines' steps; returns its losses."""
        raise NotImplementedError

    def export(self, run: tracking.StageRun) -> Any:
        raise NotImplementedError

    def run_params(self) -> dict[str, Any]:
        return {}

    def run_tags(self) -> dict[str, str]:
        return {}

    def client_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the engines and the EMA (a sampler's position)."""
        return {}

    def restore(self, client: dict[str, Any]) -> None:
        """Take back ``client_state`` from a checkpoint."""

    # --- the loop ---------------------------------------------------------------------------------
    def initialize(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule,
                   train: TrainDefaults | None = None):
        """A DeepSpeed engine of ``model`` with the run's batch and ZeRO config (``train`` overrides it)."""
        import deepspeed

        config = deepspeed_config(train or self.train, self.batch_size, self.world)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
        return engine

    def run(self) -> Any:
        self.rank, self.world = distributed.init()
        self.device = distributed.device()
        torch.manual_seed(self.train.seed)
        self.build()
        state = ResumableState(self.state_dir, companions=list(self.companions))
        start = self._resume(state)
        crash_at = int(os.environ.get(SIGKILL_AFTER_STEP_ENV, "0"))

        params = {**self.run_params(), "train": self.train.model_dump(mode="json"), "world_size": self.world,
                  "resumed_from_step": start}
        with tracking.stage_run(self.name, params, enabled=distributed.is_main(), run_file=state.run_file) as run:
            run.set_tags(self.run_tags())
            seen, tick = 0, time.perf_counter()
            for step in range(start + 1, self.steps + 1):
                for micro_step in range(self.engine.gradient_accumulation_steps()):
                    losses = self.micro_step(step, micro_step)
                    seen += self.engine.train_micro_batch_size_per_gpu() * self.world
                if self.ema is not None:
                    self.ema.update(self.engine.module)

                if step % self.train.log_every == 0 or step == self.steps:
                    metrics = {**global_mean(losses, self.world), "lr": self.engine.lr_scheduler.get_last_lr()[0],
                               "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                               "images_per_s": seen / (time.perf_counter() - tick)}
                    run.log_metrics(metrics, step=step)
                    report_progress(self.name, step, self.steps, self.train.log_every, metrics)
                    seen, tick = 0, time.perf_counter()
                if step % self.train.save_every == 0 or step == self.steps:
                    self._save(state, step)
                if step == crash_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return self.export(run)

    def _resume(self, state: ResumableState) -> int:
        """The step to continue after: 0 for a fresh start, else the last checkpoint's, whose engines,
        EMA and client state are restored."""
        client = state.load(self.engine, self.ema)
        if client is None:
            return 0
        tag = state.latest()[0]
        for name, engine in self.companions.items():
            engine.load_checkpoint(str(state.dir / name), tag=tag, load_optimizer_states=True,
                                   load_lr_scheduler_states=True)
        self.restore(client)
        return client["step"]

    def _save(self, state: ResumableState, step: int) -> None:
        """The companions' checkpoints first, the main engine's (which writes the manifest of all and
        moves the pointer) last: a kill in between leaves the previous pointer, whose checkpoints are
        complete; the companions' tags rotate with the main one's."""
        for name, engine in self.companions.items():
            engine.save_checkpoint(str(state.dir / name), tag=step_tag(step), save_latest=False)
        state.save(self.engine, step, self.ema, self.client_state())
