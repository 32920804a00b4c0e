"""Resumable training state of one stage, separate from the stage's exported checkpoint.

``resume`` continues *this* stage from its own last DeepSpeed checkpoint (optimizer, LR schedule,
EMA, sampler position); ``init_from`` starts a stage from its weak input's exported weights
with a fresh optimizer. The state lives under ``<cache>/checkpoints/<stage>/<key>``, where the key
hashes everything that defines the run, so a changed config never resumes a stale run, and it lives
outside DVC's outs, which DVC deletes before re-running a stage.

Randomness needs no saving: the trainer draws it from generators keyed by (seed, step).

A save writes the tag folder(s), then ``<tag>.manifest.json`` (relative path, size and sha256 of
every file of the tag), then ``latest.json``, our pointer (k-diffusion style), each atomically and
after every rank finished: a kill during a save leaves the previous pointer, whose files are
complete. DeepSpeed's ``load_checkpoint`` unpickles, so ``load`` first checks the pointer's tag
against its manifest and refuses a file that is missing, added, truncated or changed, naming it:
such a checkpoint was not left by a kill (the pointer never names a tag before its manifest is
written) but by the disk or someone changing it under us, and training on from an older tag would
hide that. ``run.json`` names the MLflow run of the attempt that last opened this state
(``pixart.tracking.stage_run``), so that a resumed attempt closes the run of the one it resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pixart import atomic
from pixart.hashing import file_sha256
from pixart.train import distributed
from pixart.train.ema import EMA

KEEP = 2
MANIFEST_SUFFIX = ".manifest.json"
RUN_FILE = "run.json"
# Crash drill (tests): SIGKILL inside the save of this step, after DeepSpeed wrote its part of the tag.
SIGKILL_IN_SAVE_ENV = "PIXART_SIGKILL_IN_SAVE"


def step_tag(step: int) -> str:
    """The checkpoint tag of ``step``; zero-padded so that tags sort by step."""
    return f"step-{step:08d}"


def run_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResumeError(RuntimeError):
    """The last checkpoint cannot be resumed by this run; the message says why and what to do."""



def _describe(root: Path, files: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of ``files`` (relative to ``root``), rank r hashing every world-th file and the
    ranks exchanging results. Hashing while DeepSpeed writes is not possible (its writer owns the
    files), so the files are read back right after the save, while the page cache still holds them:
    at xl a save is ~10 GB (bf16 weights, fp32 master weights and optimizer moments, fp32 EMA), the
    optimizer part in one partition per rank, so each rank hashes a GB or two at ~1 GB/s: a few
    seconds per save, against save_every steps of seconds each. Verification on resume costs the
    same, once per attempt."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = distributed.world_size()
    mine = {rel: {"size": (root / rel).stat().st_size, "sha256": file_sha256(root / rel)} for rel in files[rank::world]}
    if world == 1:
        return mine
    gathered: list[dict[str, dict[str, Any]] | None] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return {rel: entry for part in gathered for rel, entry in (part or {}).items()}


class ResumableState:
    """The resumable state of a stage in ``directory``. ``companions`` are sub-folders whose tag
    folders belong to the same checkpoint (DMD's fake score): one manifest covers them, one
    rotation removes them."""

    def __init__(self, directory: Path, companions: Sequence[str] = ()) -> None:
        self.dir = Path(directory)
        self.pointer = self.dir / "latest.json"
        self.run_file = self.dir / RUN_FILE
        self.companions = tuple(companions)

    def latest(self) -> tuple[str, int] | None:
        if not self.pointer.exists():
            return None
        info = json.loads(self.pointer.read_text())
        return info["tag"], info["step"]

    def manifest(self, tag: str) -> Path:
        return self.dir / f"{tag}{MANIFEST_SUFFIX}"

    def _tag_dirs(self, tag: str) -> list[Path]:
        return [self.dir / tag, *(self.dir / companion / tag for companion in self.companions)]

    def _files(self, tag: str) -> list[str]:
        return sorted(p.relative_to(self.dir).as_posix() for d in self._tag_dirs(tag) for p in d.rglob("*")
                      if p.is_file())

    def save(self, engine, step: int, ema: EMA | None, extra: dict[str, Any]) -> None:
        """Save ``step`` (companions' tag folders already written), then its manifest, then the
        pointer; keep the newest ``KEEP`` checkpoints. ``ema``: None for a trainer without one."""
        tag = step_tag(step)
        client = {"step": step, **extra, **({"ema_updates": ema.updates} if ema is not None else {})}
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client, save_latest=False)
        if os.environ.get(SIGKILL_IN_SAVE_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        if distributed.is_main() and ema is not None:
            save_file({k: v.contiguous().cpu() for k, v in ema.shadow.items()}, self.dir / tag / "ema.safetensors",
                      metadata={"updates": str(ema.updates), "decay": str(ema.decay)})
        distributed.barrier()
        files = _describe(self.dir, self._files(tag))
        if distributed.is_main():
            atomic.write_json(self.manifest(tag), {"tag": tag, "step": step, "files": files})
            atomic.write_json(self.pointer, {"tag": tag, "step": step, "world_size": distributed.world_size()})
            tags = sorted(p.name for p in self.dir.glob("step-*") if p.is_dir())
            for old in tags[:-KEEP]:
                for folder in self._tag_dirs(old):
                    shutil.rmtree(folder, ignore_errors=True)
                self.manifest(old).unlink(missing_ok=True)
        distributed.barrier()

    def verify(self, tag: str) -> None:
        """Raise ResumeError naming the first file of ``tag`` that its manifest does not describe:
        missing, added, of another size (checked first: no byte is read for a truncated file) or
        of another sha256."""
        manifest = self.manifest(tag)
        restart = f"delete {self.dir} to restart the stage from its weak input"
        try:
            expected: dict[str, dict[str, Any]] = json.loads(manifest.read_text())["files"]
        except FileNotFoundError:
            raise ResumeError(f"{manifest}: missing, so the checkpoint {tag} cannot be checked before DeepSpeed "
                              f"unpickles it; {restart}") from None
        found = self._files(tag)
        problems = [f"{rel}: not written by this run" for rel in sorted(set(found) - set(expected))]
        problems += [f"{rel}: missing" for rel in sorted(set(expected) - set(found))]
        problems += [f"{rel}: {(self.dir / rel).stat().st_size} bytes, the manifest says {expected[rel]['size']}"
                     for rel in sorted(set(found) & set(expected))
                     if (self.dir / rel).stat().st_size != expected[rel]["size"]]
        if not problems:
            actual = _describe(self.dir, found)
            problems = [f"{rel}: sha256 {actual[rel]['sha256'][:12]}..., the manifest says "
                        f"{expected[rel]['sha256'][:12]}..." for rel in found
                        if actual[rel]["sha256"] != expected[rel]["sha256"]]
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ResumeError(f"{self.dir / first}{more}: the checkpoint {tag} does not match {manifest}, so it "
                              f"changed on disk after it was saved; nothing was loaded: {restart}")

    def load(self, engine, ema: EMA | None) -> dict[str, Any] | None:
        """Restore engine (model, optimizer, LR schedule) and EMA; return the client state (step,
        sampler position); None when nothing was saved."""
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
        self.verify(tag)
        _, client = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if ema is not None:
            shadow = load_file(self.dir / tag / "ema.safetensors")
            ema.load_state_dict({"decay": ema.decay, "updates": client["ema_updates"], "shadow": shadow})
        return client
