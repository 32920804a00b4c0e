"""Which MLflow store this process talks to, and the helpers the other tracking modules share.

``configure`` points mlflow at a store and gets or creates the experiment; the ``_Context`` it builds
is this module's ``_context``, the one piece of state of the package: every other function reaches
it through ``_ctx``, which configures from the environment's settings on first use.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from pixart.settings import ROOT, Settings, get_settings

T = TypeVar("T")


class TrackingUnavailable(RuntimeError):
    """The tracking store did not answer; the message names it (password masked) and what was asked."""


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a store that did not answer: refused, timed out, 5xx after the
    retries (requests), or a database that cannot be opened (SQLAlchemy). A local OSError (a file
    that cannot be read for upload) is not one."""
    import requests
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.RequestException, sqlalchemy.exc.OperationalError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _reaching(shown: str, doing: str) -> Iterator[None]:
    """Turn a store that does not answer into TrackingUnavailable naming it (``shown``: its public
    URI) and the innermost cause only (the outer ones repeat the URI, password and all); other errors
    pass."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as exc:
        if not _unreachable(exc):
            raise
        raise TrackingUnavailable(f"MLflow at {shown} did not answer while {doing}: {_innermost(exc)}") from None


def _innermost(exc: BaseException) -> str:
    """The root cause of ``exc``: "ConnectionRefusedError: [Errno 111] Connection refused" rather than
    MLflow's wrapper, whose text repeats the URI, password and all."""
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Context:
    settings: Settings
    client: MlflowClient
    experiment_id: str


_context: _Context | None = None


EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


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
    with _reaching(settings.public_tracking_uri, f"looking up experiment '{settings.experiment}'"):
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
        # MLflow 3 opens an experiment of unknown kind on its GenAI overview ("Traces 0"); ours holds
        # training runs, so it says so and the UI opens on the runs
        if (experiment and experiment.tags.get(EXPERIMENT_KIND_TAG)) != TRAINING_KIND:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
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
