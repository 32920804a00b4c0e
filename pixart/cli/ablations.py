"""`pixart ablations`: the paper's claims, one row each, from a run's metrics/ablations.json (the
``ablations`` DVC stage) or the recorded reference's (``--reference``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pixart.config import PARAMS_FILE, ParamsError, load_profile


def ablations(
    reference: bool = typer.Option(False, "--reference", help="The recorded reference's rows (docs/results/metrics)."),
    root: Path = typer.Option(PARAMS_FILE.parent, help="Project root: metrics/ and docs/results/metrics/."),
) -> None:
    """One row per claim: the metric it is about, the stage and its ablation, the paired gain with its
    bootstrap interval, each arm's training seconds and seconds per image, and the verdict."""
    from pixart.eval.ablations import table
    from pixart.paths import REFERENCE_METRICS

    path = root / (REFERENCE_METRICS if reference else Path("metrics")) / "ablations.json"
    if not path.is_file():
        typer.echo(f"ablations: {path} not found; `dvc repro ablations` writes it", err=True)
        raise typer.Exit(2)
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        typer.echo(f"ablations: {path}: not JSON ({exc})", err=True)
        raise typer.Exit(2) from None
    try:  # in the order params.yaml declares them; a run of another params file keeps the file's order
        order = list(load_profile(None, root / "params.yaml")[1].claims())
    except ParamsError:
        order = []
    headers, cells = table({**{n: rows[n] for n in order if n in rows}, **rows})
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]
    for line in (headers, *cells):
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def register(app: typer.Typer) -> None:
    app.command("ablations")(ablations)
