"""What a curriculum run leaves in the Prefect UI: PixEval per stage, links to MLflow, sample grids.

Everything is read back from what the stages wrote (outputs/<stage>/stage.json, metrics/pixeval/,
the registry); nothing here computes a metric. Absent pieces are said to be absent ("not run").
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pixart import tracking
from pixart.paths import CurriculumPaths
from pixart.secrets import mask_uri, split_credentials
from pixart.stage_info import StageInfo
from pixart.train.samples import GRID_FILE

NOT_RUN = "not run"
# The UI stores artifacts in its database: inline a grid up to this size, link bigger ones by path.
MAX_INLINE_BYTES = 2_000_000


@dataclass(frozen=True)
class StageRecord:
    """A stage's registered version and the MLflow run that made it."""

    stage: str
    version: str
    run_id: str


def stage_record(paths: CurriculumPaths, stage: str) -> StageRecord | None:
    """From the local DVC output's stage.json, else from the registry alias (a stage run on
    another machine); None when the stage has neither."""
    if StageInfo.exists(paths.stage(stage)):
        info = StageInfo.read(paths.stage(stage))
        if info.model_version:
            return StageRecord(stage, info.model_version, str(info.mlflow_run_id))
    if tracking.get_alias_version(stage) is None:
        return None
    mv = tracking.model_version(stage)
    return StageRecord(stage, mv["version"], mv["run_id"])


def pixeval_rows(stages: Sequence[str], outcomes: Mapping[str, str], metrics_dir: Path,
                 records: Mapping[str, StageRecord | None]) -> list[dict[str, object]]:
    """One row per stage: what the run did, its version, and PixEval's numbers from
    metrics/pixeval/<stage>.json or "not run"."""
    rows = []
    for stage in stages:
        record = records.get(stage)
        row: dict[str, object] = {"stage": stage, "this run": outcomes.get(stage, "not in run"),
                                  "model version": record.version if record else "none"}
        metrics_file = metrics_dir / "pixeval" / f"{stage}.json"
        if metrics_file.is_file():
            row.update({k: v for k, v in json.loads(metrics_file.read_text()).items()
                        if isinstance(v, (int, float, str))})
        else:
            row["pixeval"] = NOT_RUN
        rows.append(row)
    return rows


def links_markdown(records: Sequence[StageRecord], tracking_uri: str, experiment_id: str, model: str) -> str:
    """Markdown links to each stage's MLflow run and registered version (URIs when the tracking
    store is a file, which has no web UI). The UI keeps artifacts in its database for anyone with
    API access: credentials in ``tracking_uri`` are masked in the text and left out of the links
    (the browser asks for them)."""
    shown = mask_uri(tracking_uri)
    lines = [f"# MLflow: `{model}` at `{shown}`", "", "| stage | run | version |", "|---|---|---|"]
    web = tracking_uri.startswith(("http://", "https://"))
    base = mask_uri(split_credentials(tracking_uri)[0]).rstrip("/")
    for r in records:
        if web:
            run = f"[{r.run_id[:8]}]({base}/#/experiments/{experiment_id}/runs/{r.run_id})"
            version = f"[v{r.version}]({base}/#/models/{model}/versions/{r.version})"
        else:
            run, version = f"`runs:/{r.run_id}`", f"`models:/{model}/{r.version}`"
        lines.append(f"| {r.stage} | {run} | {version} |")
    if not web:
        lines += ["", f"Browse with `mlflow ui --backend-store-uri {shown}`."]
    return "\n".join(lines)


def samples_markdown(stage: str, grid: Path) -> str | None:
    """The stage's sample grid as markdown (inlined PNG), or None when the stage wrote none."""
    if not grid.is_file():
        return None
    if grid.stat().st_size > MAX_INLINE_BYTES:
        return f"# {stage}: samples\n\nThe grid is too large to inline: `{grid}`."
    data = base64.b64encode(grid.read_bytes()).decode()
    return f"# {stage}: samples\n\n![{stage} samples](data:image/png;base64,{data})"


def ablations_markdown(rows: Mapping[str, object]) -> str:
    """metrics/ablations.json as the table `pixart ablations` prints."""
    from pixart.eval.ablations import table
    from pixart.report import markdown_table

    return "\n".join(["# Ablations", "", *markdown_table(*table(rows))]).rstrip()


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join(parts).lower().replace("_", "-").replace(".", "-")


def publish(profile: str, stages: Sequence[str], outcomes: Mapping[str, str], paths: CurriculumPaths) -> None:
    """Create the run's artifacts: ``pixeval-<profile>`` (table), ``mlflow-<profile>`` (links),
    ``recaption-<profile>`` (the caption panels, when the recaption stage wrote them), ``ablations-<profile>``
    (the claims' table, when the ablations stage ran) and
    ``samples-<stage>`` (one per stage with a grid)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    experiment_id = tracking.configure()
    settings = paths.settings
    records = {stage: stage_record(paths, stage) for stage in stages}
    create_table_artifact(
        pixeval_rows(stages, outcomes, paths.metrics, records), key=artifact_key("pixeval", profile),
        description=f"PixEval per curriculum stage ({profile})",
    )
    create_markdown_artifact(
        links_markdown([r for r in records.values() if r], settings.resolved_tracking_uri, experiment_id,
                       settings.registered_model),
        key=artifact_key("mlflow", profile), description="MLflow runs and registered versions",
    )
    ablations = paths.metrics / "ablations.json"
    if ablations.is_file():
        create_markdown_artifact(ablations_markdown(json.loads(ablations.read_text())),
                                 key=artifact_key("ablations", profile),
                                 description="The paper's claims as paired ablations (pixart ablations)")
    panels = paths.metrics / "recaption" / "panels.md"
    if panels.is_file() and panels.stat().st_size <= MAX_INLINE_BYTES:
        create_markdown_artifact(panels.read_text(), key=artifact_key("recaption", profile),
                                 description="Recaption: raw caption, recaption and truth side by side")
    for stage in stages:
        markdown = samples_markdown(stage, paths.stage(stage) / GRID_FILE)
        if markdown is not None:
            create_markdown_artifact(markdown, key=artifact_key("samples", stage),
                                     description=f"{stage}: sample grid of held-out prompts")
