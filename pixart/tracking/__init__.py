"""MLflow for the curriculum: runs, lineage tags, registered checkpoint versions, aliases, promotion.

The only package of the project that imports mlflow. One experiment holds the curriculum; a parent
run groups one curriculum run, a child run per stage holds its params, per-step metrics, system
metrics and sample images; each stage's checkpoint becomes a version of the registered model with
alias = stage name and a ``weak_input`` tag naming the version it was fine-tuned from, so the chain
back to ``base`` can be walked. Works against the embedded SQLite file and an ``mlflow server`` URL.

One job per module; callers use the names re-exported here (``tracking.stage_run(...)``):

- ``client``: which store this process talks to: ``configure`` (else configured from the settings on
  first use) and the process-wide ``_context`` it sets, ``TrackingUnavailable`` for a store that does
  not answer, and what the other modules share (git commit, params and tags cut to MLflow's limits).
- ``runs``: the curriculum's parent run and each stage's run (``curriculum_run``, ``stage_run``,
  ``StageRun``), their lifecycle under faults, and the stages' finished runs read back.
- ``registry``: checkpoints as versions of the registered model: registration, aliases, lineage,
  PixEval metrics on a version.
- ``weak_input``: the folder a fine-tuning stage starts from, local or from the registry.
"""

from pixart.tracking.client import (
    EXPERIMENT_KIND_TAG,
    TrackingUnavailable,
    configure,
    flatten_params,
    git_commit,
)
from pixart.tracking.registry import (
    get_alias_version,
    lineage,
    log_version_metrics,
    model_version,
    register_checkpoint,
    set_alias,
)
from pixart.tracking.runs import (
    METRICS_DROPPED_TAG,
    PARENT_RUN_ENV,
    RESUMED_BY_TAG,
    StageRun,
    curriculum_run,
    stage_metric_history,
    stage_run,
    stage_wall_times,
)
from pixart.tracking.weak_input import resolve_weak_input

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "METRICS_DROPPED_TAG",
    "PARENT_RUN_ENV",
    "RESUMED_BY_TAG",
    "StageRun",
    "TrackingUnavailable",
    "configure",
    "curriculum_run",
    "flatten_params",
    "get_alias_version",
    "git_commit",
    "lineage",
    "log_version_metrics",
    "model_version",
    "register_checkpoint",
    "resolve_weak_input",
    "set_alias",
    "stage_metric_history",
    "stage_run",
    "stage_wall_times",
]
