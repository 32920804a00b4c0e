"""`pixart lineage`: the chain of registered checkpoints from a stage back to base."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from pixart.cli.errors import exit_codes


def lineage(
    ref: str = typer.Argument(
        ..., help="models:/pixart-sigma@<alias>, models:/pixart-sigma/<version>, an alias or a version."
    ),
) -> None:
    """Print the weak-to-strong chain of a registered checkpoint back to its root (base)."""
    from pixart import tracking

    with exit_codes({LookupError: 2, ValueError: 2}):
        chain = tracking.lineage(ref)
    table = Table(title=f"lineage of {ref}")
    for col in (
        "stage",
        "version",
        "weak input",
        "aliases",
        "data version",
        "git commit",
        "run id",
        "metrics",
    ):
        table.add_column(col)
    for v in chain:
        metrics = " ".join(f"{k}={value:.4g}" for k, value in sorted(v["metrics"].items()))
        table.add_row(
            v["stage"] or "",
            v["version"],
            v["weak_input"] or "",
            ",".join(v["aliases"]),
            v["data_version"] or "",
            v["git_commit"] or "",
            v["run_id"] or "",
            metrics,
        )
    Console(width=200).print(table)


def register(app: typer.Typer) -> None:
    app.command("lineage")(lineage)
