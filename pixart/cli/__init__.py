"""The ``pixart`` command. Each module under ``pixart.cli`` owns one group of commands and exposes
``register(app)``; heavy imports (torch, diffusers, mlflow) stay inside the command bodies so that
``pixart --help`` starts in well under a second."""

from __future__ import annotations

import importlib

import typer

from pixart.settings import apply_env

app = typer.Typer(help="PixArt-Sigma weak-to-strong curriculum.", no_args_is_help=True, add_completion=False)


@app.callback()
def _project_env() -> None:
    # before any command imports a library, and inherited by what it starts (`pixart worker -- dvc repro`)
    apply_env()


# One entry per command module; order is the order of --help.
_MODULES = ("config", "dag", "model", "pretrained", "data", "launch", "worker", "plan", "tracking", "promote",
            "report", "ablations")

for _name in _MODULES:
    importlib.import_module(f"pixart.cli.{_name}").register(app)
