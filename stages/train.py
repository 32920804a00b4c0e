"""<stage>: one curriculum training stage, from its weak input to its exported checkpoint."""

from pixart import tracking
from pixart.data.format import dataset_version
from pixart.paths import feature_set
from pixart.train.checkpoint import run_key
from pixart.train.components import Components
from pixart.train.trainer import StageJob, train
from stages.common import parse


def build_job(ctx) -> StageJob:
    profile, paths, name = ctx.profile, ctx.paths, ctx.name
    stage = profile.stages[name]
    tracking.configure(ctx.settings)
    weak = tracking.resolve_weak_input(stage.init_from, paths.outputs) if stage.init_from else None
    data_version = dataset_version(paths.train_dataset(profile))
    identity = {"profile": ctx.profile_name, "stage": stage.model_dump(mode="json"),
                "train": profile.train.model_dump(mode="json"), "data": data_version,
                "weak_input": str(weak and (weak / "stage.json").read_text())}
    return StageJob(
        name=name, profile_name=ctx.profile_name, profile=profile, stage=stage,
        features=paths.features(feature_set(profile, name)), components=Components.for_stage(stage, paths),
        out_dir=paths.stage(name), state_dir=paths.state(name) / run_key(identity),
        data_version=data_version, weak_input=weak,
    )


def main() -> None:
    ctx = parse(__doc__, named=True)
    out = train(build_job(ctx))
    print(f"{ctx.name} -> {out}")


if __name__ == "__main__":
    main()
