"""`pixart config show` and `pixart settings show`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pixart.cli.errors import exit_codes
from pixart.config import PARAMS_FILE, ParamsError, load_profile

config_app = typer.Typer(help="The curriculum in params.yaml.", no_args_is_help=True)
settings_app = typer.Typer(help="The runtime settings (PIXART_* environment, .env).", no_args_is_help=True)


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return f"{value[0]}-{value[-1]}" if value == list(range(value[0], value[-1] + 1)) and len(value) > 2 else str(value)
    return str(value)


@config_app.command("show")
def show(
    profile: str = typer.Option(None, help="Profile to print (default: params.yaml's 'profile')."),
    params: Path = typer.Option(PARAMS_FILE, help="The params file."),
) -> None:
    """Print a profile's curriculum as a table, its ablation arms after its stages."""
    with exit_codes({ParamsError: 2}):
        name, prof = load_profile(profile, params)
    table = Table(title=f"{name}: {prof.description} (model {prof.model}, pixel scale {prof.pixel_scale:g})")
    columns = ("stage", "kind", "weak input", "res", "px", "PE", "steps", "batch", "lr", "images",
               "caption", "tokens", "vae", "kv layers", "aspect", "data", "gpus")
    for col in columns:
        table.add_column(col)
    for stage_name, s in prof.trained().items():
        table.add_row(
            stage_name, s.kind, _fmt(s.init_from or (s.pretrained and s.pretrained.name)),
            str(s.resolution), str(prof.pixels(s)), f"{s.pe_interpolation or s.resolution / 512:g}", _fmt(s.steps or None),
            _fmt(s.batch_size if s.kind != "import" else None), _fmt(s.lr if s.kind != "import" else None),
            _fmt(s.images), s.caption, str(s.max_tokens), s.vae, _fmt(s.kv_compress_layers or None),
            "buckets" if s.multi_aspect else "square", s.quality, str(s.num_gpus),
        )
    Console(width=200).print(table)


@settings_app.command("show")
def settings_show() -> None:
    """Print the settings, secrets masked."""
    from pixart.settings import Settings

    table = Table(title="settings (PIXART_*)")
    table.add_column("name")
    table.add_column("value")
    for key, value in Settings().public_dict().items():
        table.add_row(key, _fmt(value))
    Console(width=200).print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
    app.add_typer(settings_app, name="settings")
