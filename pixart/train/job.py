"""What one training stage reads and writes, resolved by ``stages.train`` from params and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pixart.config import Profile, StageConfig
from pixart.train.components import Components


@dataclass
class StageJob:
    """Everything one training stage reads and writes, resolved by ``stages.train``."""

    name: str
    profile_name: str
    profile: Profile
    stage: StageConfig
    features: Path
    components: Components
    out_dir: Path
    state_dir: Path
    data_version: str
    weak_input: Path | None = None
    sample_prompts: list[str] = field(default_factory=list)
