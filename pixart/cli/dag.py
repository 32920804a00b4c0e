"""`pixart dag`: dvc.yaml rendered from params.yaml (``--write``) or checked against it (``--check``)."""

from __future__ import annotations

from pathlib import Path

import typer

from pixart.cli.errors import exit_codes
from pixart.config import PARAMS_FILE, ParamsError
from pixart.rendered import Drift


def dag(
    write: bool = typer.Option(False, "--write", help="Render dvc.yaml from params.yaml."),
    check: bool = typer.Option(False, "--check", help="Fail (exit 1) when dvc.yaml differs from the rendering."),
    profile: str = typer.Option(None, help="Make this the active profile in params.yaml first (needs --write)."),
    params: Path = typer.Option(PARAMS_FILE, help="The params file; dvc.yaml is written beside it."),
) -> None:
    """The curriculum's DVC DAG, rendered from params.yaml's active profile (default: print it)."""
    from pixart import dag as rendering

    if profile and not write:
        raise typer.BadParameter("--profile changes params.yaml's active profile: use it with --write")
    with exit_codes({ParamsError: 2, Drift: 1}):
        if profile:
            rendering.set_active_profile(params, profile)
        if write:
            typer.echo(f"dag: {rendering.write(params)}")
        if check:
            rendering.check(params)
            typer.echo(f"dag: {rendering.dvc_file(params)} matches {params}")
        if not (write or check):
            typer.echo(rendering.render(params), nl=False)


def register(app: typer.Typer) -> None:
    app.command("dag")(dag)
