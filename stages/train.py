"""<stage>: one curriculum stage, from its weak input to its exported checkpoint: trained (kind
train), distilled into a one-step generator from its teacher pairs (dmd) or into a few-step one by
latent consistency distillation (lcm), or converted from an official checkpoint (import)."""

from pixart import tracking
from pixart.data.features import built_cache_key
from pixart.data.format import dataset_version, load_dataset
from pixart.paths import feature_set
from pixart.stage_info import StageInfo
from pixart.train.checkpoint import run_key
from pixart.train.components import Components
from pixart.train.dmd import train_dmd
from pixart.train.dmd_pairs import PAIRS_FILE
from pixart.train.job import StageJob
from pixart.train.lcm import train_lcm
from pixart.train.trainer import import_official, train
from stages.common import parse
from stages.teacher_pairs import pairs_dir


def build_job(ctx) -> StageJob:
    profile, paths, name = ctx.profile, ctx.paths, ctx.name
    stage = profile.trained()[name]
    # no tracking.configure here: every rank runs this, and only rank 0 may touch the store (two
    # processes creating a fresh SQLite schema race: "duplicate column name"); tracking configures
    # itself from the same environment on first use
    weak = tracking.resolve_weak_input(stage.init_from, paths.outputs) if stage.init_from else None
    data_version = dataset_version(paths.train_dataset(profile))
    features = paths.features(feature_set(profile, name))
    # the features' key stands for the VAE and text encoder too: a retrained VAE never resumes a
    # run that trained on the old one's latents
    identity = {"profile": ctx.profile_name, "stage": stage.model_dump(mode="json"),
                "train": profile.train.model_dump(mode="json"), "data": data_version,
                "features": built_cache_key(features), "weak_input": weak and StageInfo.read(weak).model_dump(mode="json")}
    return StageJob(
        name=name, profile_name=ctx.profile_name, profile=profile, stage=stage,
        features=features, components=Components.for_stage(stage, paths),
        out_dir=paths.stage(name), state_dir=paths.state(name) / run_key(identity),
        data_version=data_version, weak_input=weak, sample_prompts=sample_prompts(ctx, stage.caption),
    )


def sample_prompts(ctx, caption: str, n: int = 4) -> list[str]:
    """The first held-out captions of the stage's caption kind, for every data source (prepare-data
    writes data/heldout for generated and imported data alike); none before it exists."""
    heldout = ctx.paths.heldout_data
    if not heldout.exists():
        return []
    return [e.caption(caption) or e.caption("raw") for e in load_dataset(heldout)[:n]]


def main() -> None:
    ctx = parse(__doc__, named=True)
    job = build_job(ctx)
    if job.stage.kind == "import":
        out = import_official(job)
    elif job.stage.kind == "dmd":
        out = train_dmd(job, pairs_dir(ctx) / PAIRS_FILE)
    elif job.stage.kind == "lcm":
        out = train_lcm(job)
    else:
        out = train(job)
    print(f"{ctx.name} -> {out}")


if __name__ == "__main__":
    main()
