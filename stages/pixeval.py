"""pixeval: FID, alignment and CLIP-score of every stage's checkpoint on the held-out prompts (and
of the distilled DMD and LCM generators when they exist), into metrics/ and the registry; the
paper's Table 4 (metrics/table4.json: teacher, DMD, LCM at 1 / 2 / 4 steps); and, from the stages'
MLflow runs, their wall times (metrics/stage_times.json) and loss curves (metrics/loss_curves.csv)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixart import atomic, tracking
from pixart.config import Profile, StageConfig
from pixart.eval.backbones import FeatureBackbone, build_backbone
from pixart.eval.clip_score import ClipScorer
from pixart.eval.few_step import table4
from pixart.eval.fid import Statistics
from pixart.eval.judge import Judge
from pixart.eval.pixeval import (
    HeldOut,
    Metrics,
    StageEvaluation,
    evaluate_stage,
    load_heldout,
    numeric,
    reference_statistics,
    save_evaluations,
    vae_ceiling,
    write_reports,
)
from pixart.eval.trend import alignment_gain, fid_gain
from pixart.stage_info import StageInfo
from stages import judge as judges
from stages.common import StageContext, parse

# params.yaml names the backbone family; pixart.eval.backbones names the network
FID_BACKBONES = {"efficientnet-lite0": "efficientnet-lite0", "inception": "inception-v3"}


@dataclass(frozen=True)
class Setup:
    """What every PixEval of a run shares: the prompts, the FID backbone and reference, the judge and
    the CLIP scorer."""

    heldout: HeldOut
    backbone: FeatureBackbone
    reference: Statistics
    judge: Judge | None
    clip: ClipScorer | None


def setup(ctx: StageContext) -> Setup:
    """PixEval's setup, with the judge the judge stage trained."""
    profile, paths, settings, pe = ctx.profile, ctx.paths, ctx.settings, ctx.profile.pixeval
    heldout = load_heldout(paths.heldout_data, pe.n_prompts)
    weights = settings.path(pe.inception_path) if pe.inception_path else None
    backbone = build_backbone(FID_BACKBONES[pe.fid_backbone], weights, settings.resolved_device)
    reference = reference_statistics(paths.heldout_data, profile.pixels(pe.reference_resolution), backbone)
    judge = judges.load(ctx)
    clip = None
    if pe.clip_path is not None:
        from pixart.eval.clip_score import ClipScorer

        clip = ClipScorer(settings.path(pe.clip_path), settings.resolved_device)
    return Setup(heldout, backbone, reference, judge, clip)


def evaluate(ctx: StageContext, run: Setup, name: str, stage: StageConfig, *, steps: int | None = None,
             grid_path: Path | None = None) -> StageEvaluation:
    """PixEval of the checkpoint in outputs/<name>: a diffusion stage at PixEval's steps (``steps``
    overrides), a distilled one at its own."""
    pe, pixels = ctx.profile.pixeval, ctx.profile.pixels(stage)
    if steps is None and not stage.distilled:
        steps = pe.steps
    return evaluate_stage(
        ctx.paths.stage(name), run.heldout.prompts, run.heldout.scenes, run.reference, steps=steps, cfg=pe.cfg,
        seed=pe.seed, height=pixels, width=pixels, max_tokens=stage.max_tokens, backbone=run.backbone,
        judge=run.judge, clip=run.clip, grid_path=grid_path, device=ctx.settings.resolved_device,
    )


def evaluate_curriculum(
    ctx: StageContext,
) -> tuple[dict[str, StageEvaluation], dict[str, Metrics], Metrics, list[dict]]:
    """PixEval of each trained stage in curriculum order (a distilled one only when its folder
    exists), and its metrics with the VAE ceiling's; the weak-to-strong trend: the first stage's FID
    minus the last diffusion stage's, with its paired bootstrap interval (``trend.fid_gain``), and the
    caption claim (``caption_claim``); and one Table 4 per LCM stage (``few_step.table4``)."""
    profile, paths, settings = ctx.profile, ctx.paths, ctx.settings
    run = setup(ctx)
    tracking.configure(settings)
    results: dict[str, Metrics] = {}
    evaluations, versions = {}, {}
    ceilings: dict[tuple[str, int], Metrics] = {}  # stages sharing a VAE and a size share its ceiling
    for name, stage in profile.stages.items():
        stage_dir = paths.stage(name)
        if stage.distilled and not stage_dir.exists():
            continue
        if not StageInfo.exists(stage_dir):
            raise FileNotFoundError(
                f"pixeval: stage '{name}' has no checkpoint at {stage_dir} (train it first)"
            )
        pixels = profile.pixels(stage)
        evaluations[name] = evaluate(ctx, run, name, stage, grid_path=paths.metrics / "pixeval" / f"{name}.png")
        results[name] = dict(evaluations[name].metrics)
        if (stage.vae, pixels) not in ceilings:
            ceilings[stage.vae, pixels] = vae_ceiling(stage_dir / "vae", run.heldout, pixels, run.reference,
                                                      run.backbone, run.judge, device=settings.resolved_device)
        results[name] |= ceilings[stage.vae, pixels]
        versions[name] = StageInfo.read(stage_dir).model_version or name
        tracking.log_version_metrics(versions[name], numeric(results[name]))
        print(f"pixeval {name}: {results[name]}")
    tables = []
    for name, stage in profile.stages.items():
        if stage.kind == "lcm" and name in evaluations:
            by_steps = {steps: evaluate(ctx, run, name, stage, steps=steps).metrics
                        if steps != results[name]["steps"] else results[name] for steps in profile.pixeval.lcm_steps}
            tables.append(table4(profile, name, results, by_steps, profile.pixeval.steps))
            print(f"pixeval table 4 ({name}): {tables[-1]}")
    diffusion = [name for name, stage in profile.stages.items() if not stage.distilled]
    weak, strong = diffusion[0], diffusion[-1]
    trend: Metrics = {"weak": weak, "strong": strong,
                      **fid_gain(evaluations[weak].features, evaluations[strong].features, run.reference)}
    trend |= caption_claim(profile, evaluations)
    tracking.log_version_metrics(versions[strong], numeric(trend))
    print(f"pixeval trend: {trend}")
    return evaluations, results, trend, tables


def caption_claim(profile: Profile, evaluations: dict[str, StageEvaluation]) -> Metrics:
    """The paper's caption claim on this run: the alignment the first dense-caption stage (``align``)
    gains over the stage it starts from, paired by prompt (``trend.alignment_gain``); nothing when
    the profile has no such pair or the judge gave no per-prompt alignment."""
    for name, stage in profile.stages.items():
        before = stage.init_from
        if stage.caption == "dense" and before is not None and profile.stages[before].caption != "dense":
            pair = evaluations.get(before), evaluations.get(name)
            if any(e is None or e.alignment is None for e in pair):
                return {}
            return {"caption_before": before, "caption_after": name,
                    **alignment_gain(pair[0].alignment, pair[1].alignment)}
    return {}


def main() -> None:
    ctx = parse(__doc__)
    evaluations, results, trend, tables = evaluate_curriculum(ctx)
    save_evaluations(ctx.paths.pixeval_evaluations, evaluations)
    write_reports(ctx.paths.metrics, results)
    if tables:
        atomic.write_json(ctx.paths.metrics / "table4.json", {"tables": tables})
    atomic.write_json(ctx.paths.metrics / "pixeval_trend.json", trend)
    tracked = [*(f"vae-{name}" for name in ctx.profile.vaes), *ctx.profile.stages]
    atomic.write_json(ctx.paths.metrics / "stage_times.json", tracking.stage_wall_times(tracked))
    curves = tracking.stage_metric_history(ctx.profile.stages, "loss")
    rows = [f"{stage},{step},{loss:.6g}" for stage, curve in curves.items() for step, loss in curve]
    atomic.write_text(ctx.paths.metrics / "loss_curves.csv", "\n".join(["stage,step,loss", *rows]) + "\n")
    print(f"pixeval -> {ctx.paths.metrics / 'pixeval.json'}")


if __name__ == "__main__":
    main()
