"""`pixart launch MODULE`: a stage module in this process or under a multi-process launcher.

A DVC stage's command names the module that runs it: ``python -m stages.train align`` on one process,
``python -m pixart launch --num-gpus 8 stages.train align`` on several, which wraps that same module in
torchrun or the deepspeed launcher. The module is an argument: ``pixart`` never names ``stages``."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import typer


def launch(
    ctx: typer.Context,
    module: str = typer.Argument(..., help="A stage module, e.g. stages.train; its arguments follow it."),
    num_gpus: int = typer.Option(1, help="Processes per node (PIXART_NUM_GPUS overrides it)."),
    num_nodes: int = typer.Option(None, help="Nodes (default: PIXART_NUM_NODES); >1 needs a hostfile."),
    launcher: str = typer.Option(None, help="auto | none | deepspeed | torchrun (default: PIXART_LAUNCHER, auto)."),
    dry_run: bool = typer.Option(False, help="Print the command instead of running it."),
) -> None:
    """Run a stage module on NUM_GPUS processes (a training stage, features, teacher pairs): each rank does its share."""
    from pixart.settings import get_settings

    settings = get_settings()
    gpus = settings.num_gpus or num_gpus
    _run(launch_command([module, *ctx.args], gpus, num_nodes or settings.num_nodes, launcher or settings.launcher),
         dry_run)


def launch_command(module: list[str], gpus: int, nodes: int, launcher: str) -> list[str]:
    """The command that runs ``python -m MODULE ARGS`` on ``gpus`` processes per node of ``nodes``:
    in this process's interpreter alone, or under torchrun / the deepspeed launcher (``auto``: torchrun
    when there is more than one process)."""
    from pixart.settings import get_settings

    settings = get_settings()
    if launcher == "auto":
        launcher = "torchrun" if gpus * nodes > 1 else "none"
    if launcher == "none":
        return [sys.executable, "-m", *module]
    if launcher == "deepspeed":
        # --no_local_rank: the rank comes from LOCAL_RANK; the stage modules take no --local_rank argument
        cmd = [_launcher_bin("deepspeed"), "--no_local_rank", "--num_gpus", str(gpus), "--num_nodes", str(nodes),
               "--master_addr", settings.master_addr, "--master_port", str(settings.master_port)]
        if settings.hostfile:
            cmd += ["--hostfile", str(settings.hostfile)]
        return [*cmd, "--module", *module]
    if launcher == "torchrun" and nodes == 1:
        # one node: torchrun finds a free port itself, so concurrent stages on one host never collide
        return [_launcher_bin("torchrun"), "--standalone", "--nproc_per_node", str(gpus), "-m", *module]
    if launcher == "torchrun":
        return [_launcher_bin("torchrun"), "--nproc_per_node", str(gpus), "--nnodes", str(nodes),
                "--master_addr", settings.master_addr, "--master_port", str(settings.master_port), "-m", *module]
    raise typer.BadParameter(f"launcher: '{launcher}' is not auto, none, deepspeed or torchrun")


def _run(cmd: list[str], dry_run: bool) -> None:
    typer.echo(shlex.join(cmd))
    if not dry_run:
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


def _launcher_bin(name: str) -> str:
    """The launcher installed beside this interpreter (the environment's own), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def register(app: typer.Typer) -> None:
    app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(launch)
