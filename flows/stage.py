"""One DVC stage as its own flow run, for a stage dispatched to a GPU work pool.

The pod starts from a fresh clone of the repo (prefect.yaml's pull step): no dvc.lock, no outputs.
It runs the pod's recipe of flows/dvc_stage.py: ``dvc repro --pull <stage>`` restores every upstream
stage from the DVC remote's run cache and runs the stage (under the DeepSpeed launcher with the
stage's GPU count for training stages), then ``dvc push --run-cache`` sends its outs and its
run-cache entry, which is how the next stage's pod finds it without running it again. Nothing goes
back to git: the remote is the one record of what was built. The flow run ends Completed with
what happened to the stage ("ran", "restored", "skipped") as its message, for the dispatching run.

A retry of the dispatching task starts a new pod; it resumes from the stage's last resumable
checkpoint when the cache folder (``PIXART_CACHE_DIR``) is on a persistent volume, see
infra/prefect/README.md.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from flows.dvc_stage import push, repro, require_remote
from flows.plan import active_profile
from pixart.settings import get_settings
from pixart.tracking import PARENT_RUN_ENV

FLOW_NAME = "curriculum-stage"
DEPLOYMENT = f"{FLOW_NAME}/stage-gpu"


def launcher_env(num_gpus: int | None, parent_run_id: str) -> dict[str, str]:
    """The stage process's environment: nested under the curriculum's MLflow run, and for a stage
    with a GPU count (a training stage, a feature set, teacher pairs) under the DeepSpeed launcher
    with that many processes."""
    env = {**os.environ, PARENT_RUN_ENV: parent_run_id}
    if num_gpus is not None:
        env.update(PIXART_LAUNCHER="deepspeed", PIXART_NUM_GPUS=str(num_gpus))
    return env


def job_variables(num_gpus: int | None) -> dict[str, int]:
    """Work-pool job variables of a stage's pod (infra/prefect/gpu-job-template.json): a stage
    without a GPU count (prepare-data, text-encoder, vaes, pixeval) gets one GPU for its models."""
    return {"gpus": num_gpus or 1}


@flow(name=FLOW_NAME)
def curriculum_stage(stage: str, profile: str, timeout_min: int | None, parent_run_id: str,
                     num_gpus: int | None = None) -> State:
    """``dvc repro --pull <stage>`` then ``dvc push --run-cache`` on this machine."""
    root = get_settings().root
    active_profile(root, profile)
    require_remote(root)
    log = get_run_logger().info
    timeout_s = timeout_min * 60 if timeout_min else None
    outcome = repro(root, stage, timeout_s=timeout_s, pull=True, log=log, env=launcher_env(num_gpus, parent_run_id))
    push(root, timeout_s=timeout_s, log=log)
    return Completed(message=outcome, data=outcome)
