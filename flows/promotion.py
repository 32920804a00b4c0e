"""The last step of a curriculum run: move the registry's ``champion`` alias, after an optional
human approval in the Prefect UI.

The rule: PixEval decides when it ran and ``pixart.eval.promote`` exists (``pixart promote``:
best by PixEval, refusing a worse candidate); otherwise the champion is the latest curriculum stage
with a registered version (the strongest checkpoint by construction of weak-to-strong training).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows.artifacts import StageRecord, stage_record
from flows.dvc_stage import run_logged
from pixart import tracking
from pixart.config import Profile
from pixart.paths import CurriculumPaths

CHAMPION = "champion"
PROMOTE_TIMEOUT_S = 600.0


class Approval(RunInput):
    """A person's answer, given in the UI, before the champion alias moves."""

    approve: bool = Field(description="Move the champion alias as proposed.")
    note: str = Field("", description="Why (kept in the flow run's logs).")


def champion_candidate(profile: Profile, paths: CurriculumPaths) -> StageRecord | None:
    """The latest stage of the curriculum (params order) with a registered version. DMD and LCM are
    left out: they distil a stage into a faster sampler, they do not make a stronger one."""
    for name in reversed([n for n, s in profile.stages.items() if not s.distilled]):
        record = stage_record(paths, name)
        if record is not None:
            return record
    return None


def pixeval_decides(paths: CurriculumPaths) -> bool:
    """Whether PixEval metrics exist and the promotion module that reads them is installed."""
    ran = any((paths.metrics / "pixeval").glob("*.json"))
    return ran and importlib.util.find_spec("pixart.eval.promote") is not None


def ask_approval(proposal: str, timeout_s: int) -> bool:
    """Pause the flow run until a person answers in the UI; False when they decline."""
    answer = pause_flow_run(
        wait_for_input=Approval.with_initial_data(description=proposal, approve=True), timeout=timeout_s
    )
    get_run_logger().info("approval: %s %s", answer.approve, answer.note)
    return answer.approve


@task(name="promote", cache_policy=NO_CACHE)
def promote(candidate: StageRecord, by_pixeval: bool, root: Path) -> str:
    """Move ``champion``; return the version that holds it afterwards."""
    log = get_run_logger().info
    if by_pixeval:
        run_logged([sys.executable, "-m", "pixart", "promote", "--alias", CHAMPION], root, PROMOTE_TIMEOUT_S, log)
    else:
        tracking.set_alias(CHAMPION, candidate.version)
        log("champion -> %s (version %s)", candidate.stage, candidate.version)
    holder = tracking.get_alias_version(CHAMPION)
    if holder is None:
        raise RuntimeError(f"promotion left no '{CHAMPION}' alias")
    return holder
