"""judge: PixEval's alignment judge, trained on the generated training scenes (pixart.eval.judge), into
outputs/judge. A stage of its own so that a PixEval re-run and the ablations read one judge: it trains
again only when the training data, its steps or its seed change."""

from __future__ import annotations

from pixart.eval.judge import Judge
from pixart.eval.pixeval import ensure_judge
from stages.common import StageContext, parse

STAGE = "judge"


def train(ctx: StageContext) -> Judge:
    pe = ctx.profile.pixeval
    return ensure_judge(ctx.paths.train_dataset(ctx.profile), ctx.paths.outputs / STAGE, steps=pe.judge_steps,
                        seed=pe.seed)


def load(ctx: StageContext) -> Judge | None:
    """The judge this stage trained, None when the profile has none; a missing one is an error that says why."""
    if not ctx.profile.judged:
        return None
    folder = ctx.paths.outputs / STAGE
    if not (folder / "judge.safetensors").is_file():
        raise SystemExit(f"{folder}: no judge; the judge stage trains it first (dvc repro judge)")
    return Judge.load(folder)


def main() -> None:
    ctx = parse(__doc__)
    if not ctx.profile.judged:
        raise SystemExit(f"judge: profile '{ctx.profile_name}' has no judge (pixeval.judge_steps 0 or no generated scenes)")
    report = train(ctx).report
    print(f"judge: held-out accuracy {report.held_out_accuracy:.4f} ({report.steps} steps) -> {ctx.paths.outputs / STAGE}")


if __name__ == "__main__":
    main()
