"""The ``curriculum`` flow: every DVC stage of the active profile, one Prefect task each.

A task runs its stage with ``dvc repro --single-item <stage>`` (see flows/dvc_stage.py for why:
one definition of each stage, and DVC's own rule skips what is unchanged), or in its own pod from a
fresh clone with ``dvc repro --pull <stage>`` + ``dvc push --run-cache`` (the DVC remote's run cache
restores what earlier pods made). Each task returns what happened to its stage: ran, restored (from
the run cache) or skipped. Retries re-run the same command; a training stage then resumes from its
last resumable checkpoint, which lives outside the outs DVC deletes and is keyed by the run's
identity. Each stage has its own timeout (params.yaml ``timeout_min``, none when unset, as for xl's
days-long stages; data stages: ``data_timeout_min``); the flow logs which.

A stage runs in this process's machine (``execution="local"``) or as its own flow run of the
``curriculum-stage/stage-gpu`` deployment on a GPU work pool (``execution="deployment"``), with
params.yaml's ``num_gpus`` (a feature set's and teacher pairs' from the stages they serve,
``pixart.dag.sharded_gpus``).

The profile is params.yaml's ``profile``: a run may name it (a deployment states what it expects
to build) but cannot switch it, see ``flows.plan.active_profile``.

After the stages: UI artifacts (PixEval table, MLflow links, sample grids), then the ``champion``
alias moves, optionally after a person approves in the UI.

``python -m flows.curriculum`` runs it with Prefect's ephemeral API (no server needed).
"""

from __future__ import annotations

import argparse
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows import artifacts
from flows.dvc_stage import Outcome, StageFailed, StageTimeout, repro
from flows.plan import active_profile, make_plan
from flows.promotion import ask_approval, champion_candidate, pixeval_decides, promote
from flows.stage import DEPLOYMENT, job_variables
from pixart import tracking
from pixart.config import load_profile
from pixart.dag import sharded_gpus
from pixart.paths import CurriculumPaths
from pixart.settings import get_settings

# Time a dispatched stage may wait for a pod (image pull, GPU scheduling) on top of its timeout.
QUEUE_SLACK_S = 1800


@task(cache_policy=NO_CACHE)
def local_stage(stage: str, timeout_min: int | None) -> Outcome:
    """Run the stage here; DVC skips it when unchanged."""
    # PIXART_PARENT_RUN_ID (set by curriculum_run) reaches the stage through the inherited env.
    return repro(get_settings().root, stage, timeout_s=timeout_min * 60 if timeout_min else None,
                 log=get_run_logger().info)


@task(cache_policy=NO_CACHE)
def deployed_stage(stage: str, profile: str, timeout_min: int | None, num_gpus: int | None, parent_run_id: str) -> str:
    """Run the stage as a flow run of the GPU deployment and wait for it; its outcome is the final
    state's message (flows/stage.py)."""
    run = run_deployment(
        DEPLOYMENT,
        parameters={"stage": stage, "profile": profile, "timeout_min": timeout_min,
                    "parent_run_id": parent_run_id, "num_gpus": num_gpus},
        job_variables=job_variables(num_gpus),
        timeout=timeout_min * 60 + QUEUE_SLACK_S if timeout_min else None,
    )
    state = run.state
    if state is None or not state.is_final():
        raise StageTimeout(f"{stage}: flow run {run.name} not finished after {timeout_min} min + queueing")
    if not state.is_completed():
        raise StageFailed(f"{stage}: flow run {run.name} ended {state.name}: {state.message}")
    return f"{state.message} ({run.name})"


@flow(name="curriculum")
def curriculum(
    profile: str | None = None,
    stages: list[str] | None = None,
    execution: Literal["local", "deployment"] = "local",
    retries: int = 2,
    retry_delay_s: int = 10,
    data_timeout_min: int | None = 120,
    promote_champion: bool = True,
    require_approval: bool = False,
    approval_timeout_min: int = 24 * 60,
) -> dict[str, str]:
    """Build the curriculum (``stages``: a subset and what it depends on; default all), publish
    its artifacts and move ``champion``. Returns what happened to each stage."""
    logger = get_run_logger()
    settings = get_settings()
    root, paths = settings.root, CurriculumPaths(settings)
    profile_name = active_profile(root, profile)
    _, params = load_profile(profile_name, root / "params.yaml")
    plan = make_plan(root, profile_name, list(params.stages), stages)
    if plan.missing:
        logger.warning("params.yaml stages without a dvc.yaml stage, not run: %s", ", ".join(plan.missing))
    tracking.configure(settings)
    sharded = sharded_gpus(params)

    outcomes: dict[str, str] = {}
    run_params = {"profile": profile_name, "stages": ",".join(plan.stages), "execution": execution,
                  "prefect_flow_run": flow_run.get_id() or ""}
    try:
        with tracking.curriculum_run(profile_name, run_params) as parent_run_id:
            for name in plan.stages:
                config = params.trained().get(name)
                timeout_min = config.timeout_min if config else data_timeout_min
                logger.info("%s: timeout %s", name, f"{timeout_min} min (params.yaml timeout_min)" if timeout_min
                            else "none (params.yaml timeout_min unset: the stage runs until it ends)")
                options = {"name": name, "task_run_name": name, "retries": retries,
                           "retry_delay_seconds": retry_delay_s}
                if execution == "local":
                    outcomes[name] = local_stage.with_options(**options)(name, timeout_min)
                else:
                    gpus = config.num_gpus if config else sharded.get(name)
                    outcomes[name] = deployed_stage.with_options(**options)(
                        name, profile_name, timeout_min, gpus, parent_run_id)
    finally:
        # a failed run shows what it got to
        artifacts.publish(profile_name, plan.curriculum, outcomes, paths)

    if promote_champion:
        candidate = champion_candidate(params, paths)
        if candidate is None:
            raise RuntimeError("promotion: no curriculum stage has a registered version")
        by_pixeval = pixeval_decides(paths)
        proposal = ("move 'champion' by PixEval (pixart promote)" if by_pixeval
                    else f"move 'champion' to {candidate.stage} (version {candidate.version})")
        if require_approval and not ask_approval(proposal, approval_timeout_min * 60):
            logger.info("promotion declined: champion stays at %s", tracking.get_alias_version("champion"))
        else:
            outcomes["champion"] = promote(candidate, by_pixeval, root)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the curriculum flow (ephemeral Prefect API "
                                     "unless PREFECT_API_URL names a server).")
    parser.add_argument("--profile", help="must equal params.yaml's 'profile' (default: it)")
    parser.add_argument("--stages", nargs="+", help="a subset of dvc.yaml stages (and what they depend on)")
    parser.add_argument("--execution", choices=["local", "deployment"], default="local")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--no-promote", dest="promote_champion", action="store_false")
    parser.add_argument("--require-approval", action="store_true", help="wait for a person in the UI")
    args = parser.parse_args()
    outcomes = curriculum(profile=args.profile, stages=args.stages, execution=args.execution,
                          retries=args.retries, promote_champion=args.promote_champion,
                          require_approval=args.require_approval)
    for name, outcome in outcomes.items():
        print(f"{name}: {outcome}")


if __name__ == "__main__":
    main()
