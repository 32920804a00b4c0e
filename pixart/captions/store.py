"""Recaptions on disk: append-only JSON lines keyed by the image's content hash (sha256).

One file per process (``rank-<r>.jsonl``) in a folder named after the captioner's identity: ranks never
share a file, and a changed captioner (another model, instruction or budget) never reuses another's
captions. Each batch's lines are flushed and fsynced before the next batch starts, so a killed run
loses at most the batch it was on; the next run skips every image whose hash is already there, so an
unchanged image is never captioned twice, wherever it moved. A torn last line (a kill mid-write) is
dropped on reading, and that image is captioned again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


class CaptionStore:
    def __init__(self, folder: Path, rank: int = 0) -> None:
        self.folder, self.rank = Path(folder), rank

    @property
    def file(self) -> Path:
        return self.folder / f"rank-{self.rank}.jsonl"

    def read(self) -> dict[str, str]:
        """sha256 -> caption over every rank's file."""
        captions: dict[str, str] = {}
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the torn line of a killed write
                captions[record["sha256"]] = record["caption"]
        return captions

    def append(self, records: Iterable[tuple[str, str, str]]) -> None:
        """Add (sha256, path, caption) records, durably."""
        self.folder.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"sha256": h, "path": p, "caption": c}) + "\n" for h, p, c in records)
        with self.file.open("a") as f:
            # a torn line left by a kill ends without a newline: start ours on a line of its own
            if f.tell() > 0 and not self.file.read_bytes().endswith(b"\n"):
                f.write("\n")
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
