"""ablations: the paper's claims as paired comparisons (params.yaml ``ablations``). Each claim's two arms,
the stage (or its control arm at the ablation's steps) and the ablated arm, are PixEval'd on PixEval's
prompts, seeds and judge (a stage of the curriculum is not rendered again: its PixEval is read back);
metrics/ablations.json holds one row per claim (``pixart.eval.ablations``) and the stage's MLflow run
"ablations" the same. No arm is ever a candidate for an alias: its registered
version carries its own name, and promotion reads the stage table only."""

from __future__ import annotations

from pixart import atomic, tracking
from pixart.eval.ablations import arm_metrics, compare, differing_fields, table
from pixart.eval.pixeval import load_evaluation
from pixart.stage_info import StageInfo
from stages.common import parse
from stages.pixeval import evaluate, setup

STAGE = "ablations"


def main() -> None:
    ctx = parse(__doc__)
    profile, paths = ctx.profile, ctx.paths
    trained = profile.trained()
    run = setup(ctx)
    evaluations = {}
    rows = {}
    for name, ablation in profile.claims().items():
        control = f"{name}-control" if ablation.controlled else ablation.stage
        for arm in (control, name):
            if not StageInfo.exists(paths.stage(arm)):
                raise SystemExit(f"{STAGE}: '{arm}' has no checkpoint at {paths.stage(arm)} (dvc repro trains it)")
            if arm in evaluations:
                continue
            if arm in profile.stages:
                evaluations[arm] = load_evaluation(paths.pixeval_evaluations, arm)
            else:
                evaluations[arm] = evaluate(ctx, run, arm, trained[arm], grid_path=paths.metrics / STAGE / f"{arm}.png")
        infos = {arm: StageInfo.read(paths.stage(arm)) for arm in (control, name)}
        weak = {arm: (info.parent, info.parent_version) for arm, info in infos.items()}
        if weak[control] != weak[name]:
            raise SystemExit(f"{STAGE}: {name}: its arms start from different weak inputs {weak}; re-run `dvc repro`")
        rows[name] = {
            "claim": ablation.claim, "metric": ablation.metric, "expect": ablation.expect, "margin": ablation.margin,
            "weak_input": infos[name].parent, "weak_input_version": infos[name].parent_version,
            "differs_in": differing_fields(infos[control].config, infos[name].config),
            "control": {"name": control, "steps": infos[control].step, **arm_metrics(evaluations[control])},
            "ablated": {"name": name, "steps": infos[name].step, **arm_metrics(evaluations[name])},
            **compare(ablation, evaluations[control], evaluations[name], run.reference),
        }
        print(f"{STAGE} {name}: {rows[name]}")
    tracking.configure(ctx.settings)
    times = tracking.stage_wall_times(evaluations)
    for row in rows.values():
        for side in ("control", "ablated"):
            if row[side]["name"] in times:
                row[side]["train_seconds"] = times[row[side]["name"]]
    atomic.write_json(paths.metrics / "ablations.json", rows)
    with tracking.stage_run(STAGE, {"profile": ctx.profile_name,
                                    "ablations": {n: a.model_dump(mode="json") for n, a in profile.claims().items()}}) as mlrun:
        mlrun.log_metrics({f"{name}.{k}": float(v) for name, row in rows.items() for k, v in row.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}, step=0)
        mlrun.log_dict(rows, "ablations.json")
    headers, cells = table(rows)
    for cells_row in cells:
        print(" | ".join(f"{h}: {c}" for h, c in zip(headers, cells_row, strict=True)))
    print(f"{STAGE} -> {paths.metrics / 'ablations.json'}")


if __name__ == "__main__":
    main()
