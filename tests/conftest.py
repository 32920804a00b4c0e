"""Test-wide environment: the project's (offline, no telemetry), Prefect's and DVC's state in a temp folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pixart.settings import apply_stage_env

_STATE = Path(tempfile.mkdtemp(prefix="pixart-tests-"))
# First, as the caller's choice: the project's defaults below fill in only what is unset. Torch
# extensions (DeepSpeed's shm comm op) stay in the project's cache: they compile once per machine,
# not once per test run.
for key, folder in {"PREFECT_HOME": "prefect", "DVC_SITE_CACHE_DIR": "dvc-site",
                    "DVC_GLOBAL_CONFIG_DIR": "dvc-global"}.items():
    os.environ.setdefault(key, str(_STATE / folder))
apply_stage_env()
# dvc.yaml runs `python`: the environment's own, as under `make`
os.environ["PATH"] = f"{Path(__file__).resolve().parent.parent / '.venv/bin'}{os.pathsep}{os.environ.get('PATH', '')}"


# --- the smoke curriculum: one `dvc repro` of the smoke profile in a copy of the repo, shared ------

import shutil
import subprocess
import time
from dataclasses import dataclass

import pytest

REPO = Path(__file__).resolve().parent.parent


# A process group's rendezvous variables: an in-process test that trains sets them (a world of one on
# a port its store still holds); a subprocess that inherits them would try to bind that same port.
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def subprocess_env(*drop_prefixes: str) -> dict[str, str]:
    """This process's environment for a user-like subprocess: no PIXART_ settings (the subprocess
    gets its own), none of ``drop_prefixes``, no rendezvous variables."""
    return {k: v for k, v in os.environ.items()
            if k not in RENDEZVOUS and not k.startswith(("PIXART_", *drop_prefixes))}


def copy_repo(dst: Path, profile: str) -> Path:
    """The repo's tracked and unignored files in ``dst``, .venv linked, ``profile`` active, git
    initialised: what a user's clone looks like, without touching the checkout."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    (dst / ".venv").symlink_to(REPO / ".venv")
    from pixart import dag

    dag.set_active_profile(dst / "params.yaml", profile)
    dag.write(dst / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True)
    return dst


@dataclass
class SmokeRun:
    root: Path
    env: dict[str, str]
    seconds: float
    output: str


def dvc(run: SmokeRun, *args: str, worker: bool = False) -> subprocess.CompletedProcess:
    """``dvc ARGS`` in the run's folder; with ``worker``, as ``make curriculum`` runs it (under
    ``pixart worker``, whose forks run the stages)."""
    wrapper = [str(REPO / ".venv/bin/pixart"), "worker", "--"] if worker else []
    return subprocess.run([*wrapper, str(REPO / ".venv/bin/dvc"), *args], cwd=run.root, env=run.env,
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """`dvc repro` of the whole smoke curriculum, once per test session."""
    root = copy_repo(tmp_path_factory.mktemp("smoke"), "smoke")
    env = subprocess_env()
    env.update(PIXART_ROOT=str(root), TORCH_EXTENSIONS_DIR=os.environ["TORCH_EXTENSIONS_DIR"])
    run = SmokeRun(root, env, 0.0, "")
    start = time.perf_counter()
    proc = dvc(run, "repro", worker=True)
    run.seconds, run.output = time.perf_counter() - start, proc.stdout + proc.stderr
    assert proc.returncode == 0, run.output[-5000:]
    return run
