"""`pixart report`: docs/results.md and its images, rendered from metrics/, dvc.lock and params.yaml
(``--check``: fail when the committed page is not that rendering)."""

from __future__ import annotations

from pathlib import Path

import typer

from pixart.config import PARAMS_FILE, ParamsError


def report(
    check: bool = typer.Option(
        False, "--check", help="Fail (exit 1) when docs/results.md differs from the rendering; write nothing."
    ),
    root: Path = typer.Option(PARAMS_FILE.parent, help="Project root: params.yaml, dvc.lock and metrics/."),
) -> None:
    """docs/results.md and docs/results/*.png from the repository's metrics, dvc.lock and params.yaml;
    what `dvc status` finds changed since dvc.lock is marked stale."""
    from pixart import report as rendering

    try:
        if check:
            rendering.check(root)
            typer.echo(f"report: {root / rendering.PAGE} matches the metrics")
            return
        for path in rendering.write(root):
            typer.echo(f"report: {path}")
    except (ParamsError, rendering.ReportError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except rendering.ReportDrift as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("report")(report)
