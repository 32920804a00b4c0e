"""`python -m pixart` is the `pixart` command."""

from pixart.cli import app

app()
