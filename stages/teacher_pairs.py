"""<dmd stage>-pairs: the teacher's noise -> image pairs for a DMD stage's regression loss."""

from pathlib import Path

from pixart import tracking
from pixart.paths import feature_set
from pixart.train.dmd_pairs import make_teacher_pairs
from stages.common import parse


def pairs_dir(ctx) -> Path:
    """outputs/<dmd stage>-pairs: the DVC output of this stage."""
    return ctx.paths.stage(f"{ctx.name}-pairs")


def main() -> None:
    ctx = parse(__doc__, named=True)
    stage = ctx.profile.stages[ctx.name]
    if stage.kind != "dmd":
        raise SystemExit(f"stages.{ctx.name}.kind: '{stage.kind}' is not 'dmd'")
    tracking.configure(ctx.settings)
    teacher = tracking.resolve_weak_input(stage.init_from, ctx.paths.outputs)
    out = make_teacher_pairs(teacher, ctx.paths.features(feature_set(ctx.profile, ctx.name)), pairs_dir(ctx),
                             pairs=stage.dmd.pairs, steps=stage.dmd.pair_steps, cfg=stage.dmd.pair_cfg,
                             seed=ctx.profile.train.seed)
    print(f"{ctx.name} teacher pairs -> {out}")


if __name__ == "__main__":
    main()
