"""<dmd stage>-pairs: the teacher's noise -> image pairs for a DMD stage's regression loss.

``torchrun --nproc_per_node N -m stages.teacher_pairs dmd`` splits the pairs over N processes, one GPU
each; the file is the same as one process's.
"""

from pathlib import Path

from pixart import tracking
from pixart.paths import feature_set
from pixart.train.dmd_pairs import make_teacher_pairs
from stages.common import parse
from stages.features import join_launcher


def pairs_dir(ctx) -> Path:
    """outputs/<dmd stage>-pairs: the DVC output of this stage."""
    return ctx.paths.stage(f"{ctx.name}-pairs")


def main() -> None:
    ctx = parse(__doc__, named=True)
    stage = ctx.profile.stages[ctx.name]
    if stage.kind != "dmd":
        raise SystemExit(f"stages.{ctx.name}.kind: '{stage.kind}' is not 'dmd'")
    rank = join_launcher()
    # no tracking.configure: every rank runs this, and only one may create a fresh store (stages.train)
    teacher = tracking.resolve_weak_input(stage.init_from, ctx.paths.outputs)
    out = make_teacher_pairs(teacher, ctx.paths.features(feature_set(ctx.profile, ctx.name)), pairs_dir(ctx),
                             pairs=stage.dmd.pairs, steps=stage.dmd.pair_steps, cfg=stage.dmd.pair_cfg,
                             seed=ctx.profile.train.seed, precision=ctx.profile.train.precision)
    if rank == 0:
        print(f"{ctx.name} teacher pairs -> {out}")


if __name__ == "__main__":
    main()
