"""Which DVC stages one curriculum run executes, and in which order.

The curriculum's stages come from params.yaml (the active profile); the data stages that feed them
(prepare-data, text-encoder, vaes, features-<set>, ...) and the ones that read them (pixeval) come from
dvc.yaml's own graph. The run order is DVC's dependency order, ties broken by dvc.yaml's order, so a
Prefect run and ``dvc repro`` agree on what comes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from pixart.config import read_raw


class PlanError(ValueError):
    """The requested run does not match params.yaml or dvc.yaml; the message names which."""


@dataclass(frozen=True)
class Plan:
    """One curriculum run: ``stages`` are DVC stage names in run order; ``curriculum`` the selected
    params.yaml stages in params order; ``missing`` the profile's stages that dvc.yaml lacks."""

    profile: str
    stages: tuple[str, ...]
    curriculum: tuple[str, ...]
    missing: tuple[str, ...]


def active_profile(root: Path, requested: str | None) -> str:
    """params.yaml's ``profile``; ``requested`` must equal it.

    dvc.yaml builds the profile params.yaml selects, and DVC tracks that key as a param: switching
    profiles is an edit of params.yaml (so DVC re-runs what it changes), never a flag of one run
    that would leave outputs of one profile recorded under another's lock entries.
    """
    params = root / "params.yaml"
    active = read_raw(params).get("profile")
    if not active:
        raise PlanError(f"{params}: no 'profile' key selects the profile dvc.yaml builds")
    if requested is not None and requested != active:
        raise PlanError(
            f"profile: '{requested}' was requested but {params} selects '{active}'; set "
            f"'profile: {requested}' there (a DVC param: DVC then re-runs what it changes)"
        )
    return active


def dvc_order(root: Path) -> tuple[list[str], dict[str, set[str]]]:
    """dvc.yaml's stages in dependency order (ties in file order), and each stage's ancestors.

    Only dvc.yaml stages (with a command) are runnable; ``.dvc`` files of added data are inputs."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        position = {stage: i for i, stage in enumerate(repo.index.stages)}
    # DVC's edges point from a stage to the stages it depends on: reverse them to run deps first.
    order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: position.get(s, 0))
    pipeline = [s for s in order if isinstance(s, PipelineStage)]
    ancestors = {s.name: {d.name for d in nx.descendants(graph, s) if isinstance(d, PipelineStage)}
                 for s in pipeline}
    return [s.name for s in pipeline], ancestors


def make_plan(root: Path, profile: str, profile_stages: Sequence[str], selected: Sequence[str] | None) -> Plan:
    """The stages to run: every DVC stage (``selected`` None), or the selected ones and what they
    depend on. ``profile_stages`` is the profile's curriculum in params order."""
    order, ancestors = dvc_order(root)
    missing = tuple(name for name in profile_stages if name not in ancestors)
    if selected is None:
        wanted = set(order)
    else:
        unknown = [name for name in selected if name not in ancestors]
        if unknown:
            raise PlanError(f"stages: {unknown} are not stages of {root / 'dvc.yaml'} (have {order})")
        wanted = set(selected).union(*(ancestors[name] for name in selected))
    stages = tuple(name for name in order if name in wanted)
    curriculum = tuple(name for name in profile_stages if name in wanted)
    return Plan(profile, stages, curriculum, missing)
