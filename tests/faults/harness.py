"""What the fault cases share: the tiny world of tests/helpers_models.teacher_world, a short stage job on it, runs
of that job in a process of its own (which a SIGKILL can end), a tiny feature build, and the measure
of what a fault cost: the bytes of the files that existed before it and are gone or changed after.

``python -m tests.faults.harness train ROOT STEPS`` trains the world's stage in ROOT (tracking from
the environment, ``PIXART_ROOT=ROOT``); ``python -m tests.faults.harness features ROOT OUT CAPTION K``
builds a feature cache of ROOT's dataset into OUT and SIGKILLs itself once K shards are written.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

STAGE = "aes-1024"
STEPS = 4
FEATURE_IMAGES, FEATURE_BATCH = 20, 4
SHARDS = FEATURE_IMAGES // FEATURE_BATCH  # every image is cropped to one square size: one group
# the key's model hashes, fixed: the killed process and the test process build the same models
FEATURE_IDENTITY = {"vae": "tiny-vae", "text_encoder": "tiny-t5", "tokenizer": "tiny-tokenizer"}


def world(root: Path) -> None:
    """The teacher pipeline (registered at the configured store), its components and a feature
    cache in ``root``, as the stages before ``STAGE`` would leave them."""
    from tests.helpers_models import teacher_world

    teacher_world(root)


def stage_job(root: Path, steps: int = STEPS, out_dir: Path | None = None):
    """``STAGE`` of the smoke profile on the world in ``root``: a checkpoint every 2 steps, metrics
    every step."""
    from pixart.config import load_profile
    from pixart.train.components import Components
    from pixart.train.job import StageJob

    name, profile = load_profile("smoke")
    profile = profile.model_copy(update={"train": profile.train.model_copy(update={"save_every": 2, "log_every": 1})})
    teacher = root / "outputs/aes-512"
    return StageJob(name=STAGE, profile_name=name, profile=profile,
                    stage=profile.stages[STAGE].model_copy(update={"steps": steps}), features=root / "features/aes-512",
                    components=Components(vae=teacher / "vae", text_encoder=teacher),
                    out_dir=out_dir or root / f"outputs/{STAGE}", state_dir=root / f"state/{STAGE}",
                    data_version="test", weak_input=teacher)


def subprocess_run(command: str, root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m tests.faults.harness COMMAND ROOT ARGS`` from the repository, tracking at ``root``'s
    store."""
    from tests.conftest import REPO, subprocess_env

    return subprocess.run([sys.executable, "-m", "tests.faults.harness", command, str(root), *args], cwd=REPO,
                          env={**subprocess_env(), "PIXART_ROOT": str(root), **env}, capture_output=True, text=True,
                          timeout=300, check=False)


def feature_models(root: Path):
    """A tiny VAE, T5 and tokenizer, the same in every process: the tokenizer is trained once into
    ``root`` (retraining can assign other ids) and the models are seeded."""
    from pixart.models.builders import (
        TINY_VAE_CONFIGS,
        build_text_encoder,
        build_vae,
        load_tokenizer,
        train_tokenizer,
    )
    from pixart.models.specs import get_spec
    from tests.helpers_models import CAPTIONS

    folder = root / "tokenizer"
    tokenizer = load_tokenizer(folder) if folder.is_dir() else train_tokenizer(CAPTIONS, folder, vocab_size=48)
    vae = build_vae(TINY_VAE_CONFIGS["new"], seed=0).eval()
    return vae, build_text_encoder(get_spec("debug"), vocab_size=len(tokenizer), seed=0), tokenizer


def feature_dataset(root: Path) -> Path:
    from pixart.data.generate import generate_dataset

    generate_dataset(root / "data", n=FEATURE_IMAGES, seed=0, resolution_px=32)
    return root / "data"


def build_features(root: Path, out: Path, caption: str = "dense", dataset: Path | None = None) -> Path:
    from pixart.data.features import build_feature_cache

    vae, text_encoder, tokenizer = feature_models(root)
    return build_feature_cache(dataset or root / "data", out, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                               resolution_px=32, caption_kind=caption, max_tokens=16, batch_size=FEATURE_BATCH,
                               identity=dict(FEATURE_IDENTITY))


def snapshot(*paths: Path) -> dict[str, tuple[int, str]]:
    """Size and sha256 of every file under ``paths``."""
    files = [p for path in paths if path.exists() for p in ([path] if path.is_file() else path.rglob("*"))]
    return {str(p): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files if p.is_file()}


def kept(job) -> dict[str, tuple[int, str]]:
    """What a failed attempt of ``job`` must keep: its export and its resumable checkpoint (not
    run.json, which names the latest attempt and changes with each)."""
    from pixart.train.checkpoint import RUN_FILE

    return {path: entry for path, entry in snapshot(job.out_dir, job.state_dir).items()
            if Path(path) != job.state_dir / RUN_FILE}


def lost_bytes(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> int:
    """Bytes of the files in ``before`` that are missing from ``after`` or differ there."""
    return sum(size for path, (size, digest) in before.items() if after.get(path) != (size, digest))


def _kill_after_shards(k: int) -> None:
    from pixart.data import features

    write, written = features._write_shard, []

    def write_then_maybe_die(*args, **kwargs):
        write(*args, **kwargs)
        written.append(args[0])
        if len(written) == k:
            os.kill(os.getpid(), signal.SIGKILL)

    features._write_shard = write_then_maybe_die


def main(argv: list[str]) -> None:
    command, root = argv[0], Path(argv[1])
    if command == "train":
        from pixart.train.trainer import train

        train(stage_job(root, int(argv[2])))
    elif command == "features":
        out, caption, k = Path(argv[2]), argv[3], int(argv[4])
        _kill_after_shards(k)
        build_features(root, out, caption)
    else:
        raise SystemExit(f"harness: unknown command {command!r} (train | features)")


if __name__ == "__main__":
    from pixart.settings import apply_stage_env

    apply_stage_env()
    main(sys.argv[1:])
