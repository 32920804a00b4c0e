"""`pixart train STAGE`: one curriculum stage, in this process or under a multi-process launcher."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import typer


def train(
    stage: str = typer.Argument(..., help="Stage name from params.yaml."),
    profile: str = typer.Option(None, help="params.yaml profile (default: its 'profile')."),
    launcher: str = typer.Option(None, help="none | deepspeed | torchrun (default: PIXART_LAUNCHER)."),
    num_gpus: int = typer.Option(None, help="Processes per node (default: PIXART_NUM_GPUS)."),
    num_nodes: int = typer.Option(None, help="Nodes (default: PIXART_NUM_NODES); >1 needs a hostfile."),
    dry_run: bool = typer.Option(False, help="Print the command instead of running it."),
) -> None:
    """Train STAGE from its weak input (or resume it) and export its checkpoint."""
    from pixart.settings import get_settings

    settings = get_settings()
    launcher = launcher or settings.launcher
    gpus = num_gpus or settings.num_gpus
    nodes = num_nodes or settings.num_nodes
    module = ["-m", "stages.train", stage, *(["--profile", profile] if profile else [])]
    if launcher == "none":
        cmd = [sys.executable, *module]
    elif launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(gpus), "--num_nodes", str(nodes),
               "--master_addr", settings.master_addr, "--master_port", str(settings.master_port)]
        if settings.hostfile:
            cmd += ["--hostfile", str(settings.hostfile)]
        cmd += ["--module", *module[1:]]
    elif launcher == "torchrun":
        cmd = ["torchrun", "--nproc_per_node", str(gpus), "--nnodes", str(nodes),
               "--master_addr", settings.master_addr, "--master_port", str(settings.master_port), *module]
    else:
        raise typer.BadParameter(f"launcher: '{launcher}' is not none, deepspeed or torchrun")
    typer.echo(shlex.join(cmd))
    if not dry_run:
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
