"""Resumable training state of one stage, separate from the stage's exported checkpoint.

``resume`` continues *this* stage from its own last DeepSpeed checkpoint (optimizer, LR schedule,
EMA, sampler position); ``init_from`` starts a stage from its weak input's exported weights
with a fresh optimizer. The state lives under ``<cache>/checkpoints/<stage>/<key>``, where the key
hashes everything that defines the run, so a changed config never resumes a stale run, and it lives
outside DVC's outs, which DVC deletes before re-running a stage.

Randomness needs no saving: the trainer draws it from generators keyed by (seed, step).

``latest.json`` is our pointer (k-diffusion style), written atomically after every rank finished
saving: a kill during a save leaves the previous pointer, whose files are complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from pixart import atomic
from pixart.train import distributed

KEEP = 2


def step_tag(step: int) -> str:
    """The checkpoint tag of ``step``; zero-padded so that tags sort by step."""
    return f"step-{step:08d}"


def run_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResumeError(RuntimeError):
    """The last checkpoint cannot be resumed by this run; the message says why and what to do."""


class ResumableState:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.pointer = self.dir / "latest.json"

    def latest(self) -> tuple[str, int] | None:
        if not self.pointer.exists():
            return None
        info = json.loads(self.pointer.read_text())
        return info["tag"], info["step"]

    def save(self, engine, step: int, ema, extra: dict[str, Any]) -> None:
        tag = step_tag(step)
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={"step": step, **extra}, save_latest=False)
        if distributed.is_main():
            save_file({k: v.contiguous().cpu() for k, v in ema.shadow.items()}, self.dir / tag / "ema.safetensors",
                      metadata={"updates": str(ema.updates), "decay": str(ema.decay)})
        distributed.barrier()
        if distributed.is_main():
            atomic.write_json(self.pointer, {"tag": tag, "step": step, "world_size": distributed.world_size()})
            tags = sorted(p.name for p in self.dir.glob("step-*") if p.is_dir())
            for old in tags[:-KEEP]:
                shutil.rmtree(self.dir / old, ignore_errors=True)
        distributed.barrier()

    def load(self, engine, ema) -> dict[str, Any] | None:
        """Restore engine (model, optimizer, LR schedule) and EMA; return the client state (step,
        sampler position)."""
        latest = self.latest()
        if latest is None:
            return None
        tag, _ = latest
        saved_world = json.loads(self.pointer.read_text()).get("world_size", 1)
        if saved_world != distributed.world_size():
            # ZeRO partitions the optimizer states by rank: another world size would misread them
            raise ResumeError(f"{self.pointer}: the checkpoint {tag} was saved by {saved_world} processes, this run "
                              f"has {distributed.world_size()}; run on {saved_world}, or delete {self.dir} to restart "
                              "the stage from its weak input")
        _, client = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        shadow = load_file(self.dir / tag / "ema.safetensors")
        ema.load_state_dict({"decay": ema.decay, "updates": client["ema_updates"], "shadow": shadow})
        return client

    def resume(self, engine, ema, sampler) -> int:
        """Restore engine, EMA and the sampler's position from the last checkpoint; the step to
        continue after (0: nothing saved, a fresh start)."""
        client = self.load(engine, ema)
        if client is None:
            return 0
        sampler.load_state_dict(client["sampler"])
        return client["step"]
