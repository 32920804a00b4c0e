"""`pixart worker -- COMMAND`: run COMMAND (e.g. `dvc repro`) with a fork server for its stages."""

from __future__ import annotations

import subprocess

import typer


def worker(
    command: list[str] = typer.Argument(..., help="The command to run, after `--` (e.g. -- dvc repro)."),
) -> None:
    """Run COMMAND with a worker that has imported torch, diffusers, mlflow and DeepSpeed once: each
    `python -m stages.X` it starts runs in a fork of the worker instead of importing them again."""
    from pixart.worker import started

    with started() as env:
        code = subprocess.call(command, env=env)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
