"""What every stage entry point does first: read params, settings, and the stage's name."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from pixart.config import Profile, load_profile
from pixart.paths import CurriculumPaths
from pixart.settings import Settings, get_settings

# Stage processes run offline and keep tool state inside the project, whoever starts them.
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)


@dataclass(frozen=True)
class StageContext:
    profile_name: str
    profile: Profile
    settings: Settings
    paths: CurriculumPaths
    name: str | None


def parse(description: str, *, named: bool = False) -> StageContext:
    parser = argparse.ArgumentParser(description=description)
    if named:
        parser.add_argument("name", help="stage (or VAE) name from params.yaml")
    parser.add_argument("--profile", default=None, help="params.yaml profile (default: its 'profile')")
    args = parser.parse_args()
    profile_name, profile = load_profile(args.profile)
    settings = get_settings()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(settings.path(settings.cache_dir) / "torch_extensions"))
    return StageContext(profile_name, profile, settings, CurriculumPaths(settings), getattr(args, "name", None))
