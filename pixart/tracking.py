"""MLflow for the curriculum: runs, lineage tags, registered checkpoint versions, aliases, promotion.

The only module of the project that imports mlflow. One experiment holds the curriculum; a parent
run groups one curriculum run, a child run per stage holds its params, per-step metrics, system
metrics and sample images; each stage's checkpoint becomes a version of the registered model with
alias = stage name and a ``weak_input`` tag naming the version it was fine-tuned from, so the chain
back to ``base`` can be walked. Works against the embedded SQLite file and an ``mlflow server`` URL.
"""

from __future__ import annotations

import os

# mlflow reads this on import; without it every process writes ~/.config/mlflow and phones home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import functools
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from pixart import atomic
from pixart.settings import ROOT, Settings, get_settings

PARENT_RUN_ENV = "PIXART_PARENT_RUN_ID"
CHECKPOINT_ARTIFACT = "checkpoint"
METRIC_TAG_PREFIX = "metric."
_CURRICULUM_KIND = "curriculum"

T = TypeVar("T")


@dataclass(frozen=True)
class _Context:
    settings: Settings
    client: MlflowClient
    experiment_id: str


_context: _Context | None = None


def configure(settings: Settings | None = None) -> str:
    """Point mlflow at ``settings`` (default: the environment's) and get or create the experiment.

    Returns the experiment id. Every other function configures itself from the environment on first
    use; call this to use other settings (tests, a second tracking server).
    """
    global _context
    settings = settings or get_settings()
    uri = settings.resolved_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = _create_or_get(
            lambda: client.create_experiment(
                settings.experiment, artifact_location=_artifact_location(settings)
            ),
            lambda: client.get_experiment_by_name(settings.experiment).experiment_id,
        )
    _context = _Context(settings, client, experiment_id)
    return experiment_id


def _ctx() -> _Context:
    if _context is None:
        configure()
    assert _context is not None
    return _context


def _artifact_location(settings: Settings) -> str | None:
    # An mlflow server chooses and proxies its own artifact store; a local path would exist only here.
    if not settings.artifact_location and settings.resolved_tracking_uri.startswith(("http://", "https://")):
        return None
    return settings.resolved_artifact_location


def _create_or_get(create: Callable[[], T], get: Callable[[], T]) -> T:
    """Create, or get what a concurrent process (another DVC stage) created first."""
    try:
        return create()
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return get()


@functools.lru_cache
def git_commit(root: Path = ROOT) -> str:
    """Short hash of the commit checked out at ``root`` (the project), or "unknown" outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow params: dotted keys, values as strings cut to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
            continue
        if len(name) > MAX_ENTITY_KEY_LENGTH:
            raise ValueError(
                f"param key '{name[:80]}...' is longer than MLflow's {MAX_ENTITY_KEY_LENGTH} characters"
            )
        flat[name] = _truncate(str(value), MAX_PARAM_VAL_LENGTH)
    return flat


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {key: _truncate(str(value), MAX_TAG_VAL_LENGTH) for key, value in tags.items()}


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(params).items()])


def _failure_status(exc: BaseException) -> str:
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _only_when_enabled(method: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(method)
    def wrapper(self: StageRun, *args: Any, **kwargs: Any) -> None:
        if self.enabled:
            method(self, *args, **kwargs)

    return wrapper


class StageRun:
    """One stage's MLflow run. A disabled run (non-zero ranks) takes every call and logs nothing,
    so the trainer never branches on its rank."""

    def __init__(
        self,
        stage: str,
        run_id: str | None = None,
        artifact_uri: str | None = None,
        client: MlflowClient | None = None,
    ) -> None:
        self.stage = stage
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self._client = client

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @_only_when_enabled
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a nested dict as flat dotted params (``train.lr``)."""
        _log_params(self._client, self.run_id, params)

    @_only_when_enabled
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at a training step, queued: the step does not wait for the store
        (the queue is flushed when the run ends)."""
        now = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
            synchronous=False,
        )

    @_only_when_enabled
    def log_image(self, image: Any, name: str, step: int) -> None:
        """Log a PIL image (a sample grid) as step ``step`` of the image series ``name``."""
        self._client.log_image(self.run_id, image, key=name, step=step)

    @_only_when_enabled
    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """Log a dict as a JSON/YAML artifact (by the file's extension)."""
        self._client.log_dict(self.run_id, dict(obj), artifact_file)

    @_only_when_enabled
    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        """Log one local file as an artifact."""
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    @_only_when_enabled
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values cut to MLflow's length limit)."""
        self._client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in _tags(tags).items()])


@contextmanager
def curriculum_run(name: str, params: Mapping[str, Any]) -> Iterator[str]:
    """The parent run of one curriculum run; yields its id.

    While open, ``PIXART_PARENT_RUN_ID`` holds the id, so stage runs in this process and in the
    processes it starts (``dvc repro``) nest under it.
    """
    ctx = _ctx()
    run = ctx.client.create_run(ctx.experiment_id, run_name=name, tags=_parent_tags(name))
    run_id = run.info.run_id
    _log_params(ctx.client, run_id, params)
    previous = os.environ.get(PARENT_RUN_ENV)
    os.environ[PARENT_RUN_ENV] = run_id
    try:
        yield run_id
    except BaseException as exc:
        ctx.client.set_terminated(run_id, _failure_status(exc))
        raise
    else:
        ctx.client.set_terminated(run_id, "FINISHED")
    finally:
        if previous is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = previous


def _parent_tags(curriculum: str) -> dict[str, str]:
    return {"curriculum": curriculum, "git_commit": git_commit(), "run_kind": _CURRICULUM_KIND}


def _parent_run_id(ctx: _Context, explicit: str | None, curriculum: str | None) -> str:
    """The explicit id, else $PIXART_PARENT_RUN_ID, else the latest parent of this curriculum at
    this commit (created when there is none)."""
    for run_id, origin in ((explicit, "parent_run_id"), (os.environ.get(PARENT_RUN_ENV), PARENT_RUN_ENV)):
        if run_id:
            try:
                ctx.client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                raise LookupError(
                    f"{origin}={run_id}: no such MLflow run at {ctx.settings.resolved_tracking_uri}"
                ) from exc
            return run_id
    if not curriculum:
        raise ValueError(
            f"stage_run: give curriculum=<profile>, parent_run_id, a 'profile' param or set {PARENT_RUN_ENV}"
        )
    tags = _parent_tags(curriculum)
    found = ctx.client.search_runs(
        [ctx.experiment_id],
        filter_string=" and ".join(f"tags.{k} = '{v}'" for k, v in tags.items()),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    # A grouping run that no process holds open: it is finished from the start.
    run = ctx.client.create_run(ctx.experiment_id, run_name=curriculum, tags=tags)
    ctx.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any],
    *,
    curriculum: str | None = None,
    data_version: str | None = None,
    parent_run_id: str | None = None,
    enabled: bool = True,
) -> Iterator[StageRun]:
    """The MLflow run of one stage, nested under its curriculum's parent run, with system metrics.

    The parent is ``parent_run_id``, else ``$PIXART_PARENT_RUN_ID``, else found (or created) by the
    tags ``curriculum`` (default: ``params["profile"]``) and ``git_commit``. Tags: stage,
    git_commit, curriculum, data_version (when given). ``enabled=False`` (non-zero ranks) yields a
    run that logs nothing and touches no server.
    """
    if not enabled:
        yield StageRun(stage)
        return
    ctx = _ctx()
    curriculum = curriculum or params.get("profile")
    parent = _parent_run_id(ctx, parent_run_id, curriculum)
    tags: dict[str, Any] = {"stage": stage, "git_commit": git_commit(), MLFLOW_PARENT_RUN_ID: parent}
    if curriculum:
        tags["curriculum"] = curriculum
    if data_version:
        tags["data_version"] = data_version
    created = ctx.client.create_run(ctx.experiment_id, run_name=stage, tags=_tags(tags))
    run = StageRun(stage, created.info.run_id, created.info.artifact_uri, ctx.client)
    run.log_params(params)
    # The fluent API is the only public way to attach mlflow's system-metrics sampler to a run.
    mlflow.start_run(run_id=run.run_id, log_system_metrics=True)
    try:
        yield run
    except BaseException as exc:
        mlflow.end_run(_failure_status(exc))
        raise
    else:
        mlflow.end_run("FINISHED")


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
                f"no version of '{name}' has alias '{alias}' at {ctx.settings.resolved_tracking_uri}"
            )
    try:
        return ctx.client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise LookupError(
            f"no version {version} of '{name}' at {ctx.settings.resolved_tracking_uri}"
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
    run: StageRun, local_dir: Path, *, stage: str, weak_input_version: str | None, data_version: str
) -> str:
    """Log ``local_dir`` under the run's ``checkpoint`` artifacts and register it as a new version
    of the registered model, tagged stage / weak_input / git_commit / data_version, with alias
    ``stage``. ``weak_input_version`` is the weak input's version (or its stage alias); None for a
    root. Returns the new version number."""
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
    if weak_input_version is not None:
        tags["weak_input"] = str(_lookup(weak_input_version).version)
    ctx.client.log_artifacts(run.run_id, str(local_dir), CHECKPOINT_ARTIFACT)
    _create_or_get(
        lambda: ctx.client.create_registered_model(name), lambda: ctx.client.get_registered_model(name)
    )
    created = ctx.client.create_model_version(
        name, source=f"{run.artifact_uri}/{CHECKPOINT_ARTIFACT}", run_id=run.run_id, tags=_tags(tags)
    )
    version = str(created.version)
    ctx.client.set_registered_model_alias(name, stage, version)
    run.set_tags({"model_version": version})
    return version


def resolve_weak_input(stage: str, outputs_dir: Path) -> Path:
    """The weak input folder of a stage that starts from ``stage``: ``outputs_dir/<stage>`` when it
    holds a stage.json (the local DVC output), else ``models:/<model>@<stage>`` downloaded once into
    the cache (keyed by version, so a moved alias downloads the new version)."""
    local = Path(outputs_dir) / stage
    if (local / "stage.json").is_file():
        return local
    ctx = _ctx()
    name = ctx.settings.registered_model
    version = _alias_version(ctx, name, stage)
    if version is None:
        raise FileNotFoundError(
            f"weak input '{stage}': no {local / 'stage.json'} and no registered version "
            f"models:/{name}@{stage} at {ctx.settings.resolved_tracking_uri}"
        )
    target = ctx.settings.path(ctx.settings.cache_dir) / "registry" / name / version
    if not target.is_dir():
        with atomic.folder(target) as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
    return target


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
    if mv.run_id:
        now = int(time.time() * 1000)
        ctx.client.log_batch(mv.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
