"""``stage.json``: the contract between a finished stage and everything downstream of it (the next
stage's weak input, the pipeline loader, the one-step sampler, PixEval, the flows' artifacts).

One writer (``pixart.train.export``), every reader through ``StageInfo.read``. The record carries its
format: a ``stage.json`` written by an older version of this project, or by something else, is
refused with the file's name and what to do, instead of being half-read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pixart import atomic
from pixart.config import StageConfig

STAGE_FILE = "stage.json"
FORMAT = "pixart-stage/1"


class StageInfoError(ValueError):
    """A stage folder's ``stage.json`` is missing, old or foreign; the message names it."""


class LatentRange(BaseModel):
    """Per-channel range of a stage's training latents, scaled as the transformer sees them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: list[float]
    high: list[float]


class StageInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["pixart-stage/1"] = FORMAT
    stage: str
    parent: str | None
    parent_version: str | None
    profile: str
    config: StageConfig
    step: int
    data_version: str
    mlflow_run_id: str | None
    latent_range: LatentRange | None
    model_version: str | None = None

    @property
    def t_gen(self) -> int | None:
        """The generator timestep of a one-step (DMD) stage; None for a multi-step model."""
        return self.config.dmd.t_gen if self.config.kind == "dmd" else None

    @classmethod
    def read(cls, stage_dir: Path) -> StageInfo:
        path = Path(stage_dir) / STAGE_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise StageInfoError(f"{path}: missing, so {stage_dir} is not a finished stage (train it first)") from None
        refused = f"{path}: not a {FORMAT} stage record"
        redo = "it was written by another version of pixart-curriculum or by something else: re-run the stage"
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StageInfoError(f"{refused} (not JSON: {exc}); {redo}") from None
        found = raw.get("format") if isinstance(raw, dict) else None
        if found != FORMAT:
            raise StageInfoError(f"{refused} (format: {found!r}); {redo}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise StageInfoError(f"{refused} ({where}: {first['msg']}); {redo}") from None

    @staticmethod
    def exists(stage_dir: Path) -> bool:
        return (Path(stage_dir) / STAGE_FILE).is_file()

    def write(self, stage_dir: Path) -> None:
        atomic.write_json(Path(stage_dir) / STAGE_FILE, self.model_dump(mode="json"))
