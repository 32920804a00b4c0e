"""Files the repository renders from other files (dvc.yaml from params.yaml, docs/results.md from the
metrics): never edited by hand, and checked against a fresh rendering by `--check` and CI."""

from __future__ import annotations

import difflib
from pathlib import Path

DIFF_LINES = 40


class Drift(RuntimeError):
    """A rendered file is missing or is not what its sources render; the message holds the start of
    the diff and the command that renders it."""


def require_rendering(path: Path, expected: str, source: str, command: str) -> None:
    """Raise ``Drift`` unless ``path`` holds ``expected``, which ``source`` renders via ``command``."""
    actual = path.read_text() if path.is_file() else ""
    if actual != expected:
        lines = difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), str(path), f"rendered from {source}")
        diff = "".join(list(lines)[:DIFF_LINES])
        raise Drift(f"{path} is not what {source} renders; run `{command}` (never edit it by hand):\n{diff}")
