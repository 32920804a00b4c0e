"""``pixart promote``: move an alias to the best checkpoint by PixEval."""

from __future__ import annotations

import typer


def promote(
    alias: str = typer.Option("champion", help="Alias to move."),
    rule: str = typer.Option("fid", help="fid (lowest FID, alignment breaks ties) or alignment (highest)."),
    profile: str = typer.Option(None, help="params.yaml profile whose stage aliases are the candidates."),
) -> None:
    """Move ALIAS to the best registered stage checkpoint by RULE; refuse when it is worse than the holder."""
    from pixart import tracking
    from pixart.config import load_profile
    from pixart.eval.promote import PromotionRefused
    from pixart.eval.promote import promote as promote_alias

    _, params = load_profile(profile)
    candidates = [name for name in params.stages if tracking.get_alias_version(name) is not None]
    try:
        result = promote_alias(candidates, alias=alias, rule=rule)
    except (PromotionRefused, LookupError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    numbers = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items()))
    verb = "moved" if result.moved else "stays"
    typer.echo(f"{alias} {verb}: version {result.version} ({numbers}); before: {result.previous or 'none'}")


def register(app: typer.Typer) -> None:
    app.command("promote")(promote)
