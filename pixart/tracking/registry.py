"""Checkpoints as versions of the registered model: registration with lineage tags, aliases (stage
names, promotion), the chain of versions back to ``base``, PixEval metrics on a version."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pixart.tracking.client import _Context, _create_or_get, _ctx, _reaching, _tags, git_commit
from pixart.tracking.runs import StageRun

CHECKPOINT_ARTIFACT = "checkpoint"
METRIC_TAG_PREFIX = "metric."


def _split_ref(ref: str, default_name: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a version number or an alias ->
    (name, alias, version)."""
    if ref.startswith("models:/"):
        body = ref.removeprefix("models:/")
        if "@" in body:
            name, alias = body.split("@", 1)
            return name, alias, None
        name, sep, version = body.rpartition("/")
        if not sep or not version.isdigit():
            raise ValueError(f"model URI '{ref}': expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return name, None, version
    return (default_name, None, ref) if ref.isdigit() else (default_name, ref, None)


def _lookup(ref: str) -> ModelVersion:
    ctx = _ctx()
    name, alias, version = _split_ref(ref, ctx.settings.registered_model)
    if alias is not None:
        version = _alias_version(ctx, name, alias)
        if version is None:
            raise LookupError(
                f"no version of '{name}' has alias '{alias}' at {ctx.settings.public_tracking_uri}"
            )
    try:
        return ctx.client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise LookupError(
            f"no version {version} of '{name}' at {ctx.settings.public_tracking_uri}"
        ) from exc


def _alias_version(ctx: _Context, name: str, alias: str) -> str | None:
    try:
        model = ctx.client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else str(version)


def get_alias_version(alias: str) -> str | None:
    """The version of the registered model that holds ``alias``, or None."""
    ctx = _ctx()
    return _alias_version(ctx, ctx.settings.registered_model, alias)


def set_alias(alias: str, version: str) -> None:
    """Point ``alias`` of the registered model at ``version`` (promotion)."""
    ctx = _ctx()
    ctx.client.set_registered_model_alias(ctx.settings.registered_model, alias, _lookup(str(version)).version)


def register_checkpoint(
    run: StageRun, local_dir: Path, *, stage: str, weak_input_version: str | None, data_version: str,
    description: str = "",
) -> str:
    """Log ``local_dir`` under the run's ``checkpoint`` artifacts and register it as a new version
    of the registered model, tagged stage / weak_input / git_commit / data_version, with alias
    ``stage``. ``weak_input_version`` is the weak input's version (or its stage alias); None for a
    root. ``description`` is what the registry's UI shows for the version. Returns the new version number."""
    if not run.enabled:
        raise RuntimeError(
            f"register_checkpoint({stage}): the stage run is disabled (rank != 0); "
            "only the rank that exports the checkpoint registers it"
        )
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"register_checkpoint({stage}): checkpoint folder {local_dir} does not exist")
    ctx = _ctx()
    name = ctx.settings.registered_model
    tags = {"stage": stage, "git_commit": git_commit(), "data_version": data_version}
    with _reaching(ctx.settings.public_tracking_uri, f"registering {local_dir} as a version of '{name}'"):
        if weak_input_version is not None:
            tags["weak_input"] = str(_lookup(weak_input_version).version)
        ctx.client.log_artifacts(run.run_id, str(local_dir), CHECKPOINT_ARTIFACT)
        _create_or_get(
            lambda: ctx.client.create_registered_model(name), lambda: ctx.client.get_registered_model(name)
        )
        created = ctx.client.create_model_version(
            name, source=f"{run.artifact_uri}/{CHECKPOINT_ARTIFACT}", run_id=run.run_id, tags=_tags(tags),
            description=description or None,
        )
        version = str(created.version)
        ctx.client.set_registered_model_alias(name, stage, version)
        run.set_tags({"model_version": version})
    return version


def model_version(ref: str) -> dict[str, Any]:
    """A registered version (by alias, version number or models:/ URI) as a plain dict: version,
    stage, weak_input, run_id, data_version, git_commit, source, aliases, metrics."""
    mv = _lookup(ref)
    tags = mv.tags
    return {
        "name": mv.name,
        "version": str(mv.version),
        "stage": tags.get("stage"),
        "weak_input": tags.get("weak_input"),
        "run_id": mv.run_id,
        "data_version": tags.get("data_version"),
        "git_commit": tags.get("git_commit"),
        "source": mv.source,
        "aliases": list(mv.aliases),
        "metrics": {
            k.removeprefix(METRIC_TAG_PREFIX): float(v)
            for k, v in tags.items()
            if k.startswith(METRIC_TAG_PREFIX)
        },
    }


def lineage(ref: str) -> list[dict[str, Any]]:
    """The chain of versions from ``ref`` back to its root (``base``), following ``weak_input`` tags."""
    chain = [model_version(ref)]
    seen = {chain[0]["version"]}
    while chain[-1]["weak_input"]:
        weak = chain[-1]["weak_input"]
        if weak in seen:
            raise ValueError(f"lineage of {ref}: weak_input tags form a cycle at version {weak}")
        seen.add(weak)
        chain.append(model_version(f"models:/{chain[-1]['name']}/{weak}"))
    return chain


def log_version_metrics(stage_or_version: str, metrics: Mapping[str, float]) -> None:
    """Put metrics (PixEval) on a registered version, as tags ``metric.<name>``, and on its run."""
    ctx = _ctx()
    mv = _lookup(stage_or_version)
    for key, value in metrics.items():
        ctx.client.set_model_version_tag(
            mv.name, str(mv.version), f"{METRIC_TAG_PREFIX}{key}", str(float(value))
        )
    # the description keeps its first line (what the stage is) and shows the latest PixEval below it
    shown = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
    head = (mv.description or f"stage {mv.tags.get('stage', '')}").split("\nPixEval: ")[0]
    ctx.client.update_model_version(mv.name, str(mv.version), description=f"{head}\nPixEval: {shown}")
    if mv.run_id:
        now = int(time.time() * 1000)
        ctx.client.log_batch(mv.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
