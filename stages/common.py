"""What every stage entry point does first: read params, settings, and the stage's name."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from pixart.config import Profile, load_profile
from pixart.paths import CurriculumPaths
from pixart.settings import Settings, get_settings


@dataclass(frozen=True)
class StageContext:
    profile_name: str
    profile: Profile
    settings: Settings
    paths: CurriculumPaths
    name: str | None


def _refuse_drifted_dag() -> None:
    """Under DVC, a dvc.yaml rendered for another profile (or edited by hand) would run this stage with
    the wrong dependencies: stop before anything is written, and say how to fix it."""
    from pixart import dag
    from pixart.rendered import Drift

    try:
        dag.check()
    except Drift as drift:
        raise SystemExit(f"{os.environ['DVC_STAGE']}: {drift}") from None


def parse(description: str, *, named: bool = False) -> StageContext:
    parser = argparse.ArgumentParser(description=description)
    if named:
        parser.add_argument("name", help="stage (or VAE) name from params.yaml")
    parser.add_argument("--profile", default=None, help="params.yaml profile (default: its 'profile')")
    args = parser.parse_args()
    if args.profile is None and os.environ.get("DVC_STAGE"):
        _refuse_drifted_dag()
    profile_name, profile = load_profile(args.profile)
    settings = get_settings()
    return StageContext(profile_name, profile, settings, CurriculumPaths(settings), getattr(args, "name", None))
