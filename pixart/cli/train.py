"""`pixart train STAGE`: one curriculum stage, in this process or under a multi-process launcher."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import typer


def train(
    stage: str = typer.Argument(..., help="Stage name from params.yaml."),
    profile: str = typer.Option(None, help="params.yaml profile (default: its 'profile')."),
    launcher: str = typer.Option(None, help="auto | none | deepspeed | torchrun (default: PIXART_LAUNCHER, auto)."),
    num_gpus: int = typer.Option(None, help="Processes per node (default: PIXART_NUM_GPUS, else the stage's num_gpus)."),
    num_nodes: int = typer.Option(None, help="Nodes (default: PIXART_NUM_NODES); >1 needs a hostfile."),
    dry_run: bool = typer.Option(False, help="Print the command instead of running it."),
) -> None:
    """Train STAGE from its weak input (or resume it) and export its checkpoint."""
    from pixart.config import ParamsError, load_profile
    from pixart.settings import get_settings

    settings = get_settings()
    try:
        config = load_profile(profile)[1].stages[stage]
    except (ParamsError, KeyError) as exc:
        raise typer.BadParameter(f"stage '{stage}': {exc}") from None
    nodes = num_nodes or settings.num_nodes
    # an import converts weights in one process; a training stage runs on its params' num_gpus
    gpus = 1 if config.kind == "import" else num_gpus or settings.num_gpus or config.num_gpus
    launcher = launcher or settings.launcher
    if launcher == "auto":
        launcher = "torchrun" if gpus * nodes > 1 else "none"
    module = ["-m", "stages.train", stage, *(["--profile", profile] if profile else [])]
    if launcher == "none":
        cmd = [sys.executable, *module]
    elif launcher == "deepspeed":
        cmd = [_launcher_bin("deepspeed"), "--num_gpus", str(gpus), "--num_nodes", str(nodes),
               "--master_addr", settings.master_addr, "--master_port", str(settings.master_port)]
        if settings.hostfile:
            cmd += ["--hostfile", str(settings.hostfile)]
        cmd += ["--module", *module[1:]]
    elif launcher == "torchrun" and nodes == 1:
        # one node: torchrun finds a free port itself, so concurrent stages on one host never collide
        cmd = [_launcher_bin("torchrun"), "--standalone", "--nproc_per_node", str(gpus), *module]
    elif launcher == "torchrun":
        cmd = [_launcher_bin("torchrun"), "--nproc_per_node", str(gpus), "--nnodes", str(nodes),
               "--master_addr", settings.master_addr, "--master_port", str(settings.master_port), *module]
    else:
        raise typer.BadParameter(f"launcher: '{launcher}' is not none, deepspeed or torchrun")
    typer.echo(shlex.join(cmd))
    if not dry_run:
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


def _launcher_bin(name: str) -> str:
    """The launcher installed beside this interpreter (the environment's own), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def register(app: typer.Typer) -> None:
    app.command("train")(train)
