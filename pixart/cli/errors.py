"""How a command fails: the error's own message on stderr, and an exit code that says what kind of
failure it was (2: the input is bad, 1: a check found a difference), never a traceback."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import typer


@contextmanager
def exit_codes(codes: Mapping[type[Exception], int]) -> Iterator[None]:
    """Inside the block, an error of a listed type ends the command with its code (the first listed
    type it is an instance of)."""
    try:
        yield
    except tuple(codes) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(next(code for kind, code in codes.items() if isinstance(exc, kind))) from None
