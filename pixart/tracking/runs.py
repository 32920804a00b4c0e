"""The curriculum's parent run and each stage's run: params, metrics, tags, and their lifecycle.

Run lifecycle under faults (docs/faults.md):

- *Resumed attempts close their predecessor.* A stage run writes its id to the resumable state's
  ``run.json`` (``stage_run(run_file=...)``) when it starts. The next attempt on the same state (same
  stage, same resume key: a retry after a kill) reads it, tags that run ``pixart.resumed_by=<its own
  id>`` and, when it is still RUNNING (a SIGKILL leaves no chance to end it), ends it KILLED. A file
  beside the checkpoint, rather than a search of RUNNING runs, finds exactly the attempt whose
  checkpoint is resumed, costs no query, and cannot close a run that a concurrent, unrelated
  process holds open. A run recorded against another tracking URI is left alone.
- *Store down when a stage starts:* the stage fails before its first step, with
  ``TrackingUnavailable`` naming the URI (password masked); no run, no run.json, no checkpoint.
- *Store down mid-stage:* training goes on. Metrics are queued to a background thread that sends
  them in order, each request retried by MLflow's client (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
  about 4 minutes by default), so a shorter outage loses nothing. A batch whose retries run out is
  dropped: one warning names the store and the first lost step, and the run is tagged
  ``pixart.metrics_dropped`` with the count when it ends, when the batches still queued behind a
  failed one are dropped too rather than each waiting out its retries. The checkpoints never
  depend on the store.
- *Store down at registration:* the stage fails after its final checkpoint and its exported folder
  are on disk; the run cannot be ended then, so it stays RUNNING until the re-run closes it, and
  the re-run resumes at the last step, trains nothing, exports and registers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pixart import atomic
from pixart.tracking.client import _Context, _ctx, _innermost, _reaching, _tags, flatten_params, git_commit

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "PIXART_PARENT_RUN_ID"
RESUMED_BY_TAG = "pixart.resumed_by"
METRICS_DROPPED_TAG = "pixart.metrics_dropped"
_CURRICULUM_KIND = "curriculum"


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
        shown_uri: str = "",
    ) -> None:
        self.stage = stage
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self._client = client
        self._shown_uri = shown_uri
        self._sender: ThreadPoolExecutor | None = None
        self._sent: list[tuple[int, Future]] = []
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @_only_when_enabled
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a nested dict as flat dotted params (``train.lr``)."""
        _log_params(self._client, self.run_id, params)

    @_only_when_enabled
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at a training step without waiting for the store: one background
        thread sends the batches in order, each retried by MLflow's client. A batch the store still
        does not take is dropped (the module header says why); the first drop warns."""
        self._reap()
        if self._sender is None:
            self._sender = ThreadPoolExecutor(1, thread_name_prefix=f"metrics-{self.stage}")
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._sent.append((step, self._sender.submit(self._client.log_batch, self.run_id, metrics=batch)))

    def _reap(self) -> None:
        pending = []
        for step, future in self._sent:
            if not future.done():
                pending.append((step, future))
            elif future.exception() is not None:
                self._drop(step, future.exception())
        self._sent = pending

    def _drop(self, step: int, exc: BaseException) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.warning("MLflow at %s did not take the metrics of stage %s at step %d (%s); metrics it cannot "
                        "take are dropped and training goes on", self._shown_uri, self.stage, step,
                        _innermost(exc))

    def close(self) -> int:
        """Wait for the metrics in flight and return how many batches were dropped. After a failed
        batch the queued ones are dropped, not sent: each would wait out its retries against a store
        that is down."""
        failed = False
        for step, future in self._sent:
            if failed:
                future.cancel()
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - whatever the store raised, or CancelledError: dropped
                self._drop(step, exc)
                failed = True
        self._sent = []
        if self._sender is not None:
            self._sender.shutdown()
            self._sender = None
        return self.dropped

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
    run = ctx.client.create_run(ctx.experiment_id, run_name=parent_run_name(name), tags=_parent_tags(name))
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


def parent_run_name(curriculum: str) -> str:
    """What the UI lists a curriculum run as: its profile and the commit it ran, e.g. ``tiny @ 1a2b3c4``."""
    return f"{curriculum} @ {git_commit()}"


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
                    f"{origin}={run_id}: no such MLflow run at {ctx.settings.public_tracking_uri}"
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
    run = ctx.client.create_run(ctx.experiment_id, run_name=parent_run_name(curriculum), tags=tags)
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
    run_file: Path | None = None,
) -> Iterator[StageRun]:
    """The MLflow run of one stage, nested under its curriculum's parent run, with system metrics.

    The parent is ``parent_run_id``, else ``$PIXART_PARENT_RUN_ID``, else found (or created) by the
    tags ``curriculum`` (default: ``params["profile"]``) and ``git_commit``. Tags: stage,
    git_commit, curriculum, data_version (when given). ``enabled=False`` (non-zero ranks) yields a
    run that logs nothing and touches no server. ``run_file`` (the resumable state's run.json)
    records the run; the unfinished run it named before, the attempt this one resumes, is closed
    (module header). A store that does not answer raises TrackingUnavailable before anything is
    written.
    """
    if not enabled:
        yield StageRun(stage)
        return
    ctx = _ctx()
    shown = ctx.settings.public_tracking_uri
    curriculum = curriculum or params.get("profile")
    with _reaching(shown, f"starting the run of stage {stage}"):
        parent = _parent_run_id(ctx, parent_run_id, curriculum)
        tags: dict[str, Any] = {"stage": stage, "git_commit": git_commit(), MLFLOW_PARENT_RUN_ID: parent}
        if curriculum:
            tags["curriculum"] = curriculum
        if data_version:
            tags["data_version"] = data_version
        created = ctx.client.create_run(ctx.experiment_id, run_name=stage, tags=_tags(tags))
    run = StageRun(stage, created.info.run_id, created.info.artifact_uri, ctx.client, shown)
    try:
        with _reaching(shown, f"starting the run of stage {stage}"):
            run.log_params(params)
            if run_file is not None:
                _close_predecessor(ctx, Path(run_file), run.run_id)
                atomic.write_json(Path(run_file), {"run_id": run.run_id, "stage": stage, "tracking_uri": shown})
            # The fluent API is the only public way to attach mlflow's system-metrics sampler to a run.
            mlflow.start_run(run_id=run.run_id, log_system_metrics=True)
        yield run
    except BaseException as exc:
        _end_run(ctx, run, _failure_status(exc), raising=False)
        raise
    else:
        _end_run(ctx, run, "FINISHED", raising=True)


def _close_predecessor(ctx: _Context, run_file: Path, successor: str) -> None:
    """Tag the run that ``run_file`` names ``pixart.resumed_by=<successor>``, and end it KILLED when
    it is still RUNNING; a finished run, or one of another store, is left as it is."""
    try:
        previous = json.loads(run_file.read_text())
    except FileNotFoundError:
        return
    shown = ctx.settings.public_tracking_uri
    if previous.get("tracking_uri") != shown:
        log.info("%s: run %s was tracked at %s, not %s; left as it is", run_file, previous.get("run_id"),
                 previous.get("tracking_uri"), shown)
        return
    try:
        status = ctx.client.get_run(previous["run_id"]).info.status
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return
    if status == "FINISHED":
        return
    ctx.client.set_tag(previous["run_id"], RESUMED_BY_TAG, successor)
    if status in ("RUNNING", "SCHEDULED"):
        ctx.client.set_terminated(previous["run_id"], "KILLED")
        log.info("closed run %s of stage %s as KILLED: run %s resumes it", previous["run_id"],
                 previous.get("stage"), successor)


def _end_run(ctx: _Context, run: StageRun, status: str, *, raising: bool) -> None:
    """Send the metrics in flight, tag the dropped ones, end the run. On the failure path
    (``raising`` False) a store that does not answer must not hide the stage's own error: a
    warning, and the next attempt closes the run."""
    dropped = run.close()
    active = mlflow.active_run()
    try:
        with _reaching(ctx.settings.public_tracking_uri, f"ending run {run.run_id} of stage {run.stage}"):
            try:
                if dropped:
                    run.set_tags({METRICS_DROPPED_TAG: dropped})
            finally:
                if active is not None and active.info.run_id == run.run_id:
                    mlflow.end_run(status)
                else:  # it failed before the fluent run started
                    ctx.client.set_terminated(run.run_id, status)
    except Exception as exc:
        if raising:
            raise
        log.warning("%s; the run stays RUNNING until the next attempt of stage %s closes it", exc, run.stage)


def _latest_finished(ctx: _Context, stage: str) -> Any:
    runs = ctx.client.search_runs(
        [ctx.experiment_id], filter_string=f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    return runs[0] if runs else None


def stage_wall_times(stages: Iterable[str]) -> dict[str, float]:
    """Seconds from start to end of each stage's latest finished run, for the stages that have one.
    A resumed stage counts its finishing attempt only: its killed ones are runs of their own."""
    ctx = _ctx()
    times = {}
    with _reaching(ctx.settings.public_tracking_uri, "reading the stages' run times"):
        for stage in stages:
            run = _latest_finished(ctx, stage)
            if run is not None and run.info.end_time is not None:
                times[stage] = (run.info.end_time - run.info.start_time) / 1000
    return times


def stage_metric_history(stages: Iterable[str], key: str) -> dict[str, list[tuple[int, float]]]:
    """``key``'s (step, value) history in each stage's latest finished run, for the stages that logged it."""
    ctx = _ctx()
    curves = {}
    with _reaching(ctx.settings.public_tracking_uri, f"reading the stages' {key} curves"):
        for stage in stages:
            run = _latest_finished(ctx, stage)
            history = ctx.client.get_metric_history(run.info.run_id, key) if run is not None else []
            if history:
                curves[stage] = sorted((m.step, m.value) for m in history)
    return curves
