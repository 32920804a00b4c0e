"""``pixart pretrained stand-ins``: tiny random stand-ins of the pretrained parts xl loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

pretrained_app = typer.Typer(help="The pretrained parts under pretrained/.", no_args_is_help=True)


@pretrained_app.command("stand-ins")
def stand_ins(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write them into (xl reads pretrained/).")],
    spec: Annotated[str, typer.Option(help="Model spec of the PixArt-alpha checkpoint.")] = "xl-rehearsal",
    caption_channels: Annotated[
        int | None,
        typer.Option(min=1, help="T5 width; default and only valid value: the spec's caption_channels."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
) -> None:
    """Write random SD/SDXL VAEs, T5, PixArt-alpha .pth, FID Inception and CLIP with xl's file names:
    every xl loader runs on them offline (the xl-rehearsal profile); their outputs mean nothing."""
    import time

    from pixart.models.specs import get_spec
    from pixart.models.stand_ins import write_stand_ins

    try:
        model_spec = get_spec(spec)
    except KeyError as error:
        raise typer.BadParameter(error.args[0], param_hint="--spec") from None
    if caption_channels not in (None, model_spec.caption_channels):
        raise typer.BadParameter(
            f"{caption_channels} != spec {spec!r}'s caption_channels {model_spec.caption_channels}",
            param_hint="--caption-channels",
        )
    start = time.perf_counter()
    written = write_stand_ins(out_dir, spec=spec, caption_channels=caption_channels, seed=seed)
    for name, path in written.items():
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        typer.echo(f"{name}: {sum(p.stat().st_size for p in files) / 1e6:.2f} MB -> {path}")
    typer.echo(f"wrote {len(written)} stand-ins in {time.perf_counter() - start:.1f} s")


def register(app: typer.Typer) -> None:
    """Add the pretrained commands to the ``pixart`` app."""
    app.add_typer(pretrained_app, name="pretrained")
