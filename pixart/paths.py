"""Where every stage reads and writes: one place, so dvc.yaml, the stage entry points and the
Prefect flow agree. Folder names are stage names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixart.config import Profile, StageConfig
from pixart.settings import Settings

# The recorded reference run, relative to the project root: a run's metrics/ and dvc.lock, copied by
# `pixart report --record` and tracked by git (DVC's cached outputs cannot be).
REFERENCE_METRICS = Path("docs/results/metrics")
# What a stage's feature cache depends on among its params (besides the profile's pixel_scale,
# bucket_quantum_px and train.precision): dvc.yaml's features-<set> stages track exactly these.
FEATURE_FIELDS = ("vae", "resolution", "caption", "max_tokens", "multi_aspect", "quality", "images")


def feature_params(stage: StageConfig) -> tuple:
    """What a stage's feature cache depends on among its params."""
    return tuple(getattr(stage, field) for field in FEATURE_FIELDS)


def feature_set(profile: Profile, stage_name: str) -> str:
    """The feature cache a stage reads: named after the first stage with the same feature params, so
    that e.g. kv-1024 reads aes-1024's latents instead of encoding them again. An import stage reads
    none: its set is named after it and never built, so its folder does not exist. Ablation arms come
    after the table's stages, so an arm reads its stage's set unless it changes a feature field."""
    trained = profile.trained()
    if trained[stage_name].kind == "import":
        return stage_name
    params = feature_params(trained[stage_name])
    return next(name for name, s in trained.items() if s.kind != "import" and feature_params(s) == params)


def carries_raw(profile: Profile, feature_set_name: str) -> bool:
    """Whether a feature set stores its items' raw captions too: when a stage that reads it mixes them
    in (``real_prompt_ratio``); the others read the same set and ignore them."""
    trained = profile.trained()
    return any(trained[r].real_prompt_ratio > 0 for r in feature_sets(profile)[feature_set_name])


def feature_sets(profile: Profile) -> dict[str, list[str]]:
    """Every feature set of a profile, in stage-table order (then the ablation arms'), with the stages that
    read it."""
    sets: dict[str, list[str]] = {}
    for name, stage in profile.trained().items():
        if stage.kind != "import":
            sets.setdefault(feature_set(profile, name), []).append(name)
    return sets


@dataclass(frozen=True)
class CurriculumPaths:
    settings: Settings

    @property
    def data(self) -> Path:
        return self.settings.path(self.settings.data_dir)

    @property
    def train_data(self) -> Path:
        return self.data / "train"

    def train_dataset(self, profile: Profile | None = None) -> Path:
        """The training set every stage reads: data/train, which prepare-data writes for every
        source (generated or imported) and dvc.yaml declares; never the user's folder in
        ``data.path``, which only prepare-data reads. ``profile`` is accepted for the callers that
        pass it."""
        return self.train_data

    @property
    def heldout_data(self) -> Path:
        return self.data / "heldout"

    @property
    def outputs(self) -> Path:
        return self.settings.path(self.settings.outputs_dir)

    @property
    def text_encoder(self) -> Path:
        return self.outputs / "text-encoder"

    def vae(self, name: str) -> Path:
        return self.outputs / f"vae-{name}"

    def features(self, feature_set_name: str) -> Path:
        return self.settings.path(Path("features")) / feature_set_name

    @property
    def features_work(self) -> Path:
        """The feature caches' resumable work folders: outside ``features/``, which DVC deletes
        before it re-runs a features stage, so that a killed build resumes."""
        return self.settings.path(self.settings.cache_dir) / "features-partial"

    def stage(self, name: str) -> Path:
        return self.outputs / name

    @property
    def pixeval_evaluations(self) -> Path:
        """PixEval's per-prompt features and alignment of every stage (``pixeval.save_evaluations``)."""
        return self.outputs / "pixeval-evaluations"

    def state(self, name: str) -> Path:
        return self.settings.path(self.settings.cache_dir) / "checkpoints" / name

    @property
    def metrics(self) -> Path:
        return self.settings.path(self.settings.metrics_dir)
