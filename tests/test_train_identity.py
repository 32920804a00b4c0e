"""A stage resumes only the run it is: its resume key changes with its features (which stand for the
VAE and text encoder), so a retrained VAE never continues a run trained on the old latents."""

from __future__ import annotations

from pathlib import Path

from pixart import atomic
from pixart.config import load_profile
from pixart.data.generate import generate_dataset
from pixart.paths import CurriculumPaths, feature_set
from pixart.settings import Settings


def test_the_resume_key_changes_with_the_feature_cache_and_only_with_it(tmp_path: Path) -> None:
    from stages.common import StageContext
    from stages.train import build_job

    settings = Settings(root=tmp_path)
    paths = CurriculumPaths(settings)
    generate_dataset(paths.train_data, n=4, seed=0, resolution_px=32)
    _, profile = load_profile("smoke")
    ctx = StageContext("smoke", profile, settings, paths, "base")
    features = paths.features(feature_set(profile, "base"))

    def state_dir(key: str) -> Path:
        atomic.write_json(features / "index.json", {"key": key})
        return build_job(ctx).state_dir

    assert state_dir("old-vae") == state_dir("old-vae")
    assert state_dir("old-vae") != state_dir("new-vae")
