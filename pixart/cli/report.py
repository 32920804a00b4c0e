"""`pixart report`: docs/results.md and its images, rendered from the recorded reference
(docs/results/metrics/: a run's metrics and dvc.lock) and params.yaml (``--record``: make the run in
metrics/ the reference first; ``--check``: fail when the committed page is not that rendering)."""

from __future__ import annotations

from pathlib import Path

import typer

from pixart.cli.errors import exit_codes
from pixart.config import PARAMS_FILE, ParamsError
from pixart.rendered import Drift


def report(
    check: bool = typer.Option(
        False, "--check", help="Fail (exit 1) when docs/results.md differs from the rendering; write nothing."
    ),
    record: bool = typer.Option(
        False, "--record", help="First copy the run's metrics/ and dvc.lock into docs/results/metrics/ (the reference)."
    ),
    root: Path = typer.Option(PARAMS_FILE.parent, help="Project root: params.yaml, dvc.lock and metrics/."),
) -> None:
    """docs/results.md and docs/results/*.png from the recorded reference and params.yaml; what
    `dvc status` finds changed since dvc.lock, and what ran again since the reference, is marked stale."""
    from pixart import report as rendering

    with exit_codes({ParamsError: 2, rendering.ReportError: 2, Drift: 1}):
        if check and record:
            raise typer.BadParameter("--check writes nothing; --record writes the reference: choose one")
        if record:
            for path in rendering.record(root):
                typer.echo(f"report: {path}")
            return
        if check:
            rendering.check(root)
            typer.echo(f"report: {root / rendering.PAGE} matches the metrics")
            return
        for path in rendering.write(root):
            typer.echo(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
