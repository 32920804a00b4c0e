"""PixEval on a tiny debug pipeline and the generated held-out set: real sampling, real FID backbone,
real judges (an under-trained one that refuses, a trained one under `slow`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pixart import tracking
from pixart.config import load_profile
from pixart.data.format import load_dataset
from pixart.data.generate import generate_dataset
from pixart.eval.backbones import build_backbone
from pixart.eval.fid import extract_features, frechet_distance_to
from pixart.eval.judge import MIN_HELD_OUT_ACCURACY, Judge, train_judge
from pixart.eval.pixeval import (
    StageEvaluation,
    ensure_judge,
    evaluate_stage,
    load_evaluation,
    load_heldout,
    reference_images,
    reference_statistics,
    save_evaluations,
    vae_ceiling,
    write_reports,
)
from pixart.models.pipeline import save_pipeline
from pixart.paths import CurriculumPaths
from pixart.settings import Settings
from tests.helpers_models import DEBUG_IMAGE_SIDE, debug_parts, write_stage_info

SIDE = DEBUG_IMAGE_SIDE
N_PROMPTS = 5


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stage")
    return save_pipeline(root / "pipe", **debug_parts(root / "tokenizer"))


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("heldout") / "heldout"
    generate_dataset(data, n=N_PROMPTS + 3, seed=0, resolution_px=64, split="heldout")
    return load_heldout(data, N_PROMPTS)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def weak_judge(tmp_path_factory: pytest.TempPathFactory) -> Judge:
    root = tmp_path_factory.mktemp("judge")
    generate_dataset(root / "train", n=40, seed=1, resolution_px=32)
    train_judge(root / "train", root / "judge", resolution=32, steps=1, width=8)
    return Judge.load(root / "judge")


def _evaluate(stage_dir, heldout, backbone, judge, batch_size=2, **extra):
    result = evaluate_stage(
        stage_dir, heldout.prompts, heldout.scenes, reference_statistics(heldout.dataset_dir, SIDE, backbone), steps=2,
        cfg=4.5, seed=3,
        height=SIDE, width=SIDE, max_tokens=32, backbone=backbone, judge=judge, batch_size=batch_size, **extra,
    )  # fmt: skip
    assert result.features.shape == (N_PROMPTS, backbone.feature_dim)
    if isinstance(result.metrics["alignment"], float):
        assert result.alignment.shape == (N_PROMPTS,)
    else:
        assert result.alignment is None  # a refusing judge gives no per-prompt numbers to pair
    return result.metrics


def test_heldout_prompts_are_dense_captions_and_the_reference_is_the_high_quality_tier(heldout, tmp_path) -> None:
    assert len(heldout.entries) == N_PROMPTS
    assert heldout.prompts == [e.sharegpt4v for e in heldout.entries]
    entries = load_dataset(heldout.dataset_dir)
    high = [e for e in entries if e.quality == "high"]
    assert 2 <= len(high) < len(entries)  # the fixture has both tiers
    reference = reference_images(heldout.dataset_dir, 48)
    assert reference.shape == (len(high), 3, 48, 48)
    assert 0.0 <= float(reference.min()) and float(reference.max()) <= 1.0
    with pytest.raises(ValueError, match="FID needs at least 2"):
        load_heldout(heldout.dataset_dir, 1)
    low_only = tmp_path / "low"
    shutil.copytree(heldout.dataset_dir, low_only)
    info = json.loads((low_only / "data_info.json").read_text())
    (low_only / "data_info.json").write_text(json.dumps([{**e, "quality": "low"} for e in info]))
    with pytest.raises(ValueError, match="high-quality held-out images"):
        reference_images(low_only, 48)


def test_evaluate_stage_gives_repeatable_numbers_far_from_real_images_and_an_untrusted_judge_refuses(
    stage_dir, heldout, backbone, weak_judge, tmp_path
) -> None:
    accuracy = weak_judge.report.held_out_accuracy
    assert accuracy < MIN_HELD_OUT_ACCURACY

    metrics = _evaluate(stage_dir, heldout, backbone, weak_judge, grid_path=tmp_path / "grid.png")
    reference = reference_statistics(heldout.dataset_dir, SIDE, backbone)
    assert frechet_distance_to(extract_features(reference_images(heldout.dataset_dir, SIDE), backbone), reference) \
        <= 1e-6 * np.trace(reference.sigma)  # the reference against itself
    generate_dataset(tmp_path / "other", n=16, seed=1, resolution_px=64)
    other_real = frechet_distance_to(extract_features(reference_images(tmp_path / "other", SIDE), backbone), reference)
    # an untrained stage draws noise: measured 391 against other real scenes' 95
    assert metrics["fid"] > 2 * other_real, (metrics["fid"], other_real)
    assert metrics["seconds_per_image"] > 0
    assert metrics["n_images"] == N_PROMPTS
    assert metrics["alignment"] == f"judge refused: {accuracy:.3f}"
    assert "alignment_shuffled" not in metrics and "clip_score" not in metrics
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * SIDE, 2 * SIDE)  # 5 images tile 3 x 2

    # fixed seeds per prompt: the same checkpoint gives the same images in batches of any size, hence
    # the same FID (to float rounding: a batched matmul may sum in another order)
    again = _evaluate(stage_dir, heldout, backbone, weak_judge, batch_size=3)
    assert again["fid"] == pytest.approx(metrics["fid"], rel=1e-5)


def test_evaluate_stage_rejects_mismatched_inputs(stage_dir, heldout, backbone) -> None:
    with pytest.raises(ValueError, match="differ in number"):
        evaluate_stage(
            stage_dir, heldout.prompts[:-1], heldout.scenes, reference_statistics(heldout.dataset_dir, SIDE, backbone), steps=2,
            cfg=4.5, seed=0,
            height=SIDE, width=SIDE, max_tokens=32, backbone=backbone,
        )  # fmt: skip


def test_reports_hold_every_stage_in_order_and_the_plot_leaves_refusals_blank(tmp_path) -> None:
    results = {
        "base": {"fid": 40.5, "alignment": "judge refused: 0.612", "seconds_per_image": 0.1},
        "align": {"fid": 30.25, "alignment": 0.5, "alignment_shuffled": 0.2, "seconds_per_image": 0.1,
                  "vae_ceiling_alignment": 0.75},
    }
    write_reports(tmp_path, results)
    assert json.loads((tmp_path / "pixeval" / "align.json").read_text()) == results["align"]
    assert json.loads((tmp_path / "pixeval.json").read_text()) == results
    assert (tmp_path / "pixeval_plot.csv").read_text().splitlines() == [
        "stage,fid,alignment,vae_ceiling_alignment",
        "base,40.5,,",
        "align,30.25,0.5,0.75",
    ]


def test_the_judge_is_trained_once_per_key(tmp_path) -> None:
    generate_dataset(tmp_path / "train", n=30, seed=2, resolution_px=32)
    ensure_judge(tmp_path / "train", tmp_path / "judge", steps=1)
    weights = tmp_path / "judge" / "judge.safetensors"
    first = weights.stat().st_mtime_ns
    ensure_judge(tmp_path / "train", tmp_path / "judge", steps=1)
    assert weights.stat().st_mtime_ns == first
    ensure_judge(tmp_path / "train", tmp_path / "judge", steps=2)  # another key: trained again
    assert weights.stat().st_mtime_ns != first
    assert Judge.load(tmp_path / "judge").report.steps == 2


@pytest.fixture
def curriculum(tmp_path: Path, stage_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A project root with generated train / held-out data, a registry in a temp SQLite file and the
    smoke profile cut down to base (trained and registered) and dmd (not yet trained)."""
    from stages.common import StageContext

    settings = Settings(
        root=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'registry.db'}", artifact_location=""
    )
    monkeypatch.setattr(tracking.client, "_context", None)
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    tracking.configure(settings)
    paths = CurriculumPaths(settings)
    generate_dataset(paths.train_data, n=30, seed=0, resolution_px=32)
    generate_dataset(paths.heldout_data, n=4, seed=0, resolution_px=32, split="heldout")
    _, smoke = load_profile("smoke")
    stages = {name: smoke.stages[name] for name in ("base", "align", "dmd")}
    stages["align"] = stages["align"].model_copy(update={"init_from": "base"})  # its weak input in this table
    profile = smoke.model_copy(update={
        "stages": stages, "pixeval": smoke.pixeval.model_copy(update={"steps": 2, "judge_steps": 1}),
    })  # fmt: skip
    shutil.copytree(stage_dir, paths.stage("base"))
    _moved_transformer(stage_dir, paths.stage("align"))
    version = None
    for name in ("base", "align"):
        with tracking.stage_run(name, {"profile": "smoke"}) as run:
            version = tracking.register_checkpoint(
                run, paths.stage(name), stage=name, weak_input_version=version, data_version="test"
            )
        write_stage_info(paths.stage(name), name, model_version=version)
    return StageContext("smoke", profile, settings, paths, None)


def _moved_transformer(src: Path, dst: Path) -> None:
    """A copy of pipeline ``src`` whose transformer weights moved by seeded noise, as a training stage
    moves its weak input's: other images from the same prompts and seeds."""
    shutil.copytree(src, dst)
    weights = dst / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in tensors.items()}, weights)


def test_pixeval_stage_evaluates_trained_stages_logs_them_in_the_registry_and_adds_dmd_when_present(
    curriculum,
) -> None:
    from stages import judge
    from stages.pixeval import evaluate_curriculum

    paths = curriculum.paths
    with pytest.raises(SystemExit, match="the judge stage trains it first"):
        evaluate_curriculum(curriculum)
    judge.train(curriculum)
    evaluations, results, trend, _ = evaluate_curriculum(curriculum)
    assert list(results) == ["base", "align"]  # dmd has no folder yet: skipped
    # what the ablations read back of a stage is what PixEval computed
    save_evaluations(paths.pixeval_evaluations, evaluations)
    for name, evaluation in evaluations.items():
        back = load_evaluation(paths.pixeval_evaluations, name)
        assert back.metrics == evaluation.metrics
        np.testing.assert_array_equal(back.features, evaluation.features)
        assert (back.alignment is None) == (evaluation.alignment is None)
        if back.alignment is not None:
            np.testing.assert_array_equal(back.alignment, evaluation.alignment)
    with pytest.raises(FileNotFoundError, match="no PixEval of stage 'dmd'"):
        load_evaluation(paths.pixeval_evaluations, "dmd")
    # the trend runs from the first diffusion stage to the last: their FID difference, resampled
    assert (trend["weak"], trend["strong"]) == ("base", "align")
    assert results["base"]["fid"] != results["align"]["fid"]
    assert trend["fid_gain"] == pytest.approx(results["base"]["fid"] - results["align"]["fid"], rel=1e-9)
    assert trend["fid_gain_low"] < trend["fid_gain_high"]
    assert results["base"]["alignment"].startswith("judge refused: ")
    registered = tracking.model_version("base")["metrics"]
    assert registered["fid"] == pytest.approx(results["base"]["fid"])
    assert "alignment" not in registered  # a refusal is text: it never reaches the registry
    assert results["base"]["vae_ceiling_fid"] > 0
    assert registered["vae_ceiling_fid"] == pytest.approx(results["base"]["vae_ceiling_fid"])
    assert "vae_ceiling_alignment" not in results["base"]  # the refusing judge scores no ceiling either
    assert (paths.metrics / "pixeval" / "base.png").is_file()
    judge_weights = paths.outputs / "judge" / "judge.safetensors"
    trained_at = judge_weights.stat().st_mtime_ns

    shutil.copytree(paths.stage("base"), paths.stage("dmd"))
    _, results, trend, _ = evaluate_curriculum(curriculum)
    assert list(results) == ["base", "align", "dmd"]
    assert trend["strong"] == "align"  # the one-step generator is not the curriculum's strong end
    judge.train(curriculum)
    assert judge_weights.stat().st_mtime_ns == trained_at  # same data and steps: the judge is reused
    # dmd samples in one step without CFG, base in two with CFG: the same weights give other images
    assert results["dmd"]["fid"] != results["base"]["fid"]
    # the same VAE at dmd's 512 rows (smoke: 32 px) vs base's 256 (16 px): another ceiling
    assert 0 < results["dmd"]["vae_ceiling_fid"] != results["base"]["vae_ceiling_fid"]


@pytest.mark.slow
def test_a_trusted_judge_scores_alignment_and_shuffled_prompts_score_lower_on_real_images(
    stage_dir, heldout, backbone, tmp_path
) -> None:
    from pixart.eval.pixeval import _alignment

    generate_dataset(tmp_path / "train", n=600, seed=0, resolution_px=32)
    train_judge(
        tmp_path / "train", tmp_path / "judge", resolution=32, steps=300, width=16, batch_size=32, lr=5e-3
    )
    judge = Judge.load(tmp_path / "judge")
    assert judge.report.held_out_accuracy >= MIN_HELD_OUT_ACCURACY, judge.report

    metrics = _evaluate(stage_dir, heldout, backbone, judge)
    assert 0.0 <= metrics["alignment"] <= 1.0 and 0.0 <= metrics["alignment_shuffled"] <= 1.0
    assert metrics["judge_accuracy"] == judge.report.held_out_accuracy
    reference = reference_statistics(heldout.dataset_dir, SIDE, backbone)
    ceiling = vae_ceiling(stage_dir / "vae", heldout, SIDE, reference, backbone, judge)
    assert 0.0 <= ceiling["vae_ceiling_alignment"] <= 1.0 and ceiling["vae_ceiling_fid"] > 0

    # the judge reads whole scenes: square real images, uncropped
    square = [e for e in load_dataset(tmp_path / "train") if e.height == e.width][:32]
    real = np.stack([np.asarray(Image.open(tmp_path / "train" / e.path).convert("RGB")) for e in square])
    on_real, per_image = _alignment(judge, real, [e.scene for e in square])
    assert on_real["alignment"] > on_real["alignment_shuffled"] + 0.2, on_real
    assert per_image.shape == (len(square),) and per_image.mean() == pytest.approx(on_real["alignment"])


class _CountingJudge:
    """Scores every image 1 and remembers which scenes it was asked about."""

    def __init__(self) -> None:
        self.report = type("Report", (), {"held_out_accuracy": 1.0})()
        self.asked: list = []

    def alignment(self, images, scenes):
        self.asked.append(list(scenes))
        return torch.ones(len(images))


def test_the_vae_ceilings_alignment_reads_square_scenes_only(stage_dir, heldout, backbone) -> None:
    # a square crop of a non-square scene cuts away cells its prompt names: no ceiling can be read there
    square = [e.scene for e in heldout.entries if e.height == e.width]
    assert 2 <= len(square) < len(heldout.entries), "the fixture needs both square and non-square scenes"
    judge = _CountingJudge()
    reference = reference_statistics(heldout.dataset_dir, SIDE, backbone)
    ceiling = vae_ceiling(stage_dir / "vae", heldout, SIDE, reference, backbone, judge)
    assert judge.asked[0] == square and ceiling["vae_ceiling_alignment"] == 1.0


def test_the_caption_claim_pairs_align_with_the_stage_it_starts_from() -> None:
    from stages.pixeval import caption_claim

    _, profile = load_profile("tiny")
    rng = np.random.default_rng(0)
    aligned = {name: StageEvaluation({}, np.zeros((8, 2)), rng.uniform(0, 1, 8)) for name in profile.stages}
    aligned["vae-adapt"] = StageEvaluation({}, np.zeros((8, 2)), np.full(8, 0.2))
    aligned["align"] = StageEvaluation({}, np.zeros((8, 2)), np.full(8, 0.5))
    claim = caption_claim(profile, aligned)
    assert (claim["caption_before"], claim["caption_after"]) == ("vae-adapt", "align")
    assert claim["alignment_gain"] == pytest.approx(0.3) and claim["alignment_gain_low"] == pytest.approx(0.3)
    # a refusing judge leaves nothing to pair: no claim rather than a made-up one
    aligned["align"] = StageEvaluation({}, np.zeros((8, 2)), None)
    assert caption_claim(profile, aligned) == {}
