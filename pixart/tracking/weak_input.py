"""The folder a fine-tuning stage starts from: its weak input's local DVC output, else the version
registered under the weak input's stage alias."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pixart import atomic
from pixart.stage_info import STAGE_FILE, StageInfo
from pixart.tracking.client import _ctx
from pixart.tracking.registry import _alias_version


def resolve_weak_input(stage: str, outputs_dir: Path) -> Path:
    """The weak input folder of a stage that starts from ``stage``: ``outputs_dir/<stage>`` when it
    holds a stage.json (the local DVC output), else ``models:/<model>@<stage>`` downloaded once into
    the cache (keyed by version, so a moved alias downloads the new version)."""
    local = Path(outputs_dir) / stage
    if StageInfo.exists(local):
        return local
    ctx = _ctx()
    name = ctx.settings.registered_model
    version = _alias_version(ctx, name, stage)
    if version is None:
        raise FileNotFoundError(
            f"weak input '{stage}': no {local / STAGE_FILE} and no registered version "
            f"models:/{name}@{stage} at {ctx.settings.public_tracking_uri}"
        )
    target = ctx.settings.path(ctx.settings.cache_dir) / "registry" / name / version
    if not target.is_dir():
        with atomic.folder(target) as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
    return target
