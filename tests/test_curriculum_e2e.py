"""The smoke curriculum through `dvc repro`, as a user runs it (slow: one shared run per session)."""

import json
import re
import subprocess
import time

import numpy as np
import pytest

from pixart.config import load_profile
from pixart.eval.judge import MIN_HELD_OUT_ACCURACY
from tests.conftest import REPO, dvc

pytestmark = pytest.mark.slow

_, SMOKE = load_profile("smoke")
TRAINED = [name for name, s in SMOKE.stages.items() if s.kind == "train"]


def test_smoke_curriculum_builds_every_stage(smoke_run):
    for name in TRAINED:
        info = json.loads((smoke_run.root / "outputs" / name / "stage.json").read_text())
        assert info["stage"] == name and info["parent"] == SMOKE.stages[name].init_from
        assert info["model_version"]
        low, high = info["latent_range"]["low"], info["latent_range"]["high"]
        assert len(low) == len(high) == 4 and all(lo < hi for lo, hi in zip(low, high, strict=True)), info
    stats = json.loads((smoke_run.root / "metrics/caption_stats.json").read_text())
    assert stats["dense"]["avg_nouns_per_image"] > stats["raw"]["avg_nouns_per_image"]
    vaes = json.loads((smoke_run.root / "metrics/vaes.json").read_text())
    assert set(vaes) == {"old", "new"}
    # pixels in [-1, 1] bound an MSE by 4; smoke's 2-step VAEs learn nothing to speak of, so that
    # they do learn is pinned by tests/test_train_vae.py
    for errors in vaes.values():
        assert 0.0 < errors["heldout_mse"] <= 4.0 and 0.0 < errors["heldout_object_mse"] <= 4.0, vaes
    print(f"smoke dvc repro: {smoke_run.seconds:.0f} s")


def test_every_stage_output_loads_in_diffusers_pipeline(smoke_run):
    script = (
        "import sys, pixart.models.transformer  # diffusers resolves our class from an imported module\n"
        "from diffusers import PixArtSigmaPipeline\n"
        "for path in sys.argv[1:]:\n"
        "    p = PixArtSigmaPipeline.from_pretrained(path)\n"
        "    print(path, type(p.transformer).__name__, p.transformer.config.kv_compress_layers)\n"
    )
    paths = [str(smoke_run.root / "outputs" / n) for n in TRAINED]
    out = subprocess.run([str(REPO / ".venv/bin/python"), "-c", script, *paths], env=smoke_run.env,
                         capture_output=True, text=True, check=True).stdout
    for name in TRAINED:
        layers = SMOKE.stages[name].kv_compress_layers
        assert re.search(rf"/{name} PixArtSigmaTransformer \[{', '.join(map(str, layers))}\]", out), out


def test_a_loaded_stage_samples_inside_its_latent_range_and_its_folder_stays_stock(smoke_run):
    from pixart.diffusion.schedule import DataRangeDPMSolver
    from pixart.models.pipeline import load_pipeline

    folder = smoke_run.root / "outputs/aes-512"
    scheduler = load_pipeline(folder).scheduler
    assert isinstance(scheduler, DataRangeDPMSolver)
    latent_range = json.loads((folder / "stage.json").read_text())["latent_range"]
    assert scheduler.latent_low.tolist() == pytest.approx(latent_range["low"])
    assert scheduler.latent_high.tolist() == pytest.approx(latent_range["high"])
    saved = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    assert saved["_class_name"] == "DPMSolverMultistepScheduler"  # what diffusers alone loads


def test_dmd_exports_a_one_step_generator_and_pixeval_scores_every_stage(smoke_run):
    from pixart.diffusion.one_step import one_step_t_gen

    assert one_step_t_gen(smoke_run.root / "outputs/dmd") == SMOKE.stages["dmd"].dmd.t_gen
    assert one_step_t_gen(smoke_run.root / "outputs/kv-2k") is None
    report = json.loads((smoke_run.root / "metrics/pixeval.json").read_text())
    assert set(report) == set(SMOKE.stages)
    for name, metrics in report.items():
        assert metrics["fid"] > 0.0 and metrics["vae_ceiling_fid"] > 0.0, (name, metrics)
        # smoke's judge passes its gate (tests/test_eval_judge.py pins its steps): numbers, not refusals
        assert metrics["judge_accuracy"] >= MIN_HELD_OUT_ACCURACY, (name, metrics)
        for key in ("alignment", "alignment_shuffled", "vae_ceiling_alignment"):
            assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, (name, key, metrics)
    trend = json.loads((smoke_run.root / "metrics/pixeval_trend.json").read_text())
    diffusion = [name for name, s in SMOKE.stages.items() if not s.distilled]
    assert (trend["weak"], trend["strong"]) == (diffusion[0], diffusion[-1])
    assert trend["fid_gain"] == pytest.approx(report[diffusion[0]]["fid"] - report[diffusion[-1]]["fid"])
    plot = (smoke_run.root / "metrics/pixeval_plot.csv").read_text().splitlines()
    assert plot[0].startswith("stage,fid") and len(plot) == 1 + len(SMOKE.stages)
    assert all(row.split(",")[2] for row in plot[1:]), plot  # no blank alignment cell: the judge scored


def test_lcm_ships_its_scheduler_and_pixeval_writes_table4(smoke_run):
    from diffusers import LCMScheduler

    from pixart.models.pipeline import load_pipeline

    assert isinstance(load_pipeline(smoke_run.root / "outputs/lcm").scheduler, LCMScheduler)
    report = json.loads((smoke_run.root / "metrics/pixeval.json").read_text())
    assert report["lcm"]["steps"] == 4 and report["lcm"]["sampler"] == "LCM 4 steps, no CFG"
    (table,) = json.loads((smoke_run.root / "metrics/table4.json").read_text())["tables"]
    assert table["teacher"] == SMOKE.stages["lcm"].init_from
    assert [(r["row"], r["steps"]) for r in table["rows"]] == [("DMD", 1), ("LCM", 1), ("LCM", 2), ("LCM", 4),
                                                              ("teacher", SMOKE.pixeval.steps)]
    assert table["rows"][-1]["fid"] == report[table["teacher"]]["fid"] and table["rows"][-1]["speedup"] == 1.0
    assert table["rows"][3]["fid"] == report["lcm"]["fid"]
    assert all(r["fid"] > 0 and r["seconds_per_image"] > 0 for r in table["rows"])


def test_align_trains_on_the_recaptions_and_the_audit_compares_three_sources(smoke_run):
    from pixart.captions.recaption import image_hashes

    root = smoke_run.root
    recaptions = json.loads((root / "outputs/recaption/train.json").read_text())["captions"]
    assert set(recaptions) == set(image_hashes(root / "data/train").values())  # every training image
    # data_info.json keeps the generator's captions; the features of the dense sets hold the recaptions
    index = json.loads((root / "features/align/index.json").read_text())
    assert index["components"]["dense_captions"], index["components"]
    assert "dense_captions" not in json.loads((root / "features/base/index.json").read_text())["components"]
    audit = json.loads((root / "metrics/recaption.json").read_text())
    assert set(audit["sources"]) == {"raw", "recaption", "truth"}
    truth = audit["sources"]["truth"]
    assert (truth["hallucination"], truth["recall"], truth["exact"]) == (0.0, 1.0, 1.0)
    assert 0.0 <= audit["sources"]["recaption"]["hallucination"] <= 1.0 and audit["reader_held_out_accuracy"] > 0
    panels = (root / "metrics/recaption/panels.md").read_text()
    assert "| image | raw | recaption | truth |" in panels and "data:image/png;base64," in panels


def test_pixevals_judge_reads_real_heldout_images_far_above_chance(smoke_run):
    from PIL import Image

    from pixart.data.format import load_dataset
    from pixart.eval.judge import Judge

    judge = Judge.load(smoke_run.root / "outputs/judge")
    heldout = smoke_run.root / "data/heldout"
    square = [e for e in load_dataset(heldout) if e.height == e.width]
    images = np.stack([np.asarray(Image.open(heldout / e.path).convert("RGB")) for e in square])
    scenes = [e.scene for e in square]
    own = float(judge.alignment(images, scenes).mean())
    shuffled = float(judge.alignment(images, scenes[1:] + scenes[:1]).mean())
    # measured with smoke's 100-step judge on its 4 square held-out images: 0.79 against 0.10
    assert len(square) >= 2 and own > shuffled + 0.4, (own, shuffled)


def test_an_ablation_row_pairs_two_arms_of_one_weak_input_differing_only_in_its_changes(smoke_run):
    from pixart.config import StageConfig
    from pixart.eval.ablations import differing_fields

    root = smoke_run.root
    (name, ablation), = ((n, a) for n, a in SMOKE.claims().items() if a.controlled)
    row = json.loads((root / "metrics/ablations.json").read_text())[name]
    arms = row["control"]["name"], row["ablated"]["name"]
    assert arms == (f"{name}-control", name) and ablation.controlled
    infos = [json.loads((root / "outputs" / arm / "stage.json").read_text()) for arm in arms]
    # both arms start from the stage's weak input, the same registered version of it
    weak = SMOKE.stages[ablation.stage].init_from
    assert {(i["parent"], i["parent_version"]) for i in infos} == {(weak, row["weak_input_version"])}
    configs = [StageConfig.model_validate(i["config"]) for i in infos]
    assert differing_fields(*configs) == row["differs_in"] == sorted(ablation.changes)
    assert [c.steps for c in configs] == [ablation.steps] * 2
    # the row is computed from the two arms' PixEvals: its gain is their paired difference of means
    assert row["gain"] == pytest.approx(row["control"]["alignment"] - row["ablated"]["alignment"])
    assert row["gain_low"] <= row["gain"] <= row["gain_high"] and row["verdict"] in {
        "supported", "not supported", "not resolved"}
    assert all(row[side]["train_seconds"] > 0 and row[side]["seconds_per_image"] > 0 for side in ("control", "ablated"))
    printed = subprocess.run([str(REPO / ".venv/bin/pixart"), "ablations", "--root", str(root)], env=smoke_run.env,
                             capture_output=True, text=True, check=True).stdout
    assert ablation.claim in printed and f"`{name}-control` vs `{name}`" in printed and row["verdict"] in printed
    # an arm registers a version under its own alias, with its lineage; the stage's alias stays on the stage
    def lineage(alias: str) -> str:
        return subprocess.run([str(REPO / ".venv/bin/pixart"), "lineage", f"models:/pixart-sigma@{alias}"],
                              env=smoke_run.env, capture_output=True, text=True, check=True).stdout

    chain = lineage(name)
    positions = [chain.index(f"│ {stage} ") for stage in (name, "vae-adapt", "base")]
    assert positions == sorted(positions), chain
    align = json.loads((root / "outputs/align/stage.json").read_text())["model_version"]
    first = next(line for line in lineage("align").splitlines() if "│ align " in line)
    assert f"│ {align} " in first, first


def test_an_ablation_at_its_stages_steps_reads_the_stage_from_pixeval_and_renders_only_its_arm(smoke_run):
    root = smoke_run.root
    (name, ablation), = ((n, a) for n, a in SMOKE.claims().items() if not a.controlled)
    row = json.loads((root / "metrics/ablations.json").read_text())[name]
    assert (row["control"]["name"], row["ablated"]["name"]) == (ablation.stage, name)
    pixeval = json.loads((root / "metrics/pixeval.json").read_text())[ablation.stage]
    assert {k: row["control"][k] for k in ("fid", "seconds_per_image")} == {
        k: pixeval[k] for k in ("fid", "seconds_per_image")}
    assert row["stage_value"] == pixeval["fid"] and row["ablation_value"] == row["ablated"]["fid"]
    grids = sorted(p.stem for p in (root / "metrics/ablations").glob("*.png"))
    assert ablation.stage not in grids and name in grids, grids
    assert row["differs_in"] == ["kv_compress_layers"]


def test_registry_holds_one_aliased_version_per_stage_with_lineage(smoke_run):
    out = subprocess.run([str(REPO / ".venv/bin/pixart"), "lineage", "models:/pixart-sigma@kv-2k"], env=smoke_run.env,
                         capture_output=True, text=True, check=True).stdout
    chain = ["kv-2k", "kv-1024", "aes-1024", "aes-512", "align", "vae-adapt", "base"]
    positions = [out.index(f"│ {name} ") for name in chain]
    assert positions == sorted(positions), out


def test_second_repro_is_a_noop_costing_under_5_percent_of_the_build(smoke_run):
    """Bounded by the build it skips, timed on the same machine: CI machines differ 2x in speed, and on
    a slow one a no-op took 6.7 s of a 229 s build (a fixed 5 s bound failed there); re-running a stage
    or re-hashing every output would cost far more."""
    start = time.perf_counter()
    proc = dvc(smoke_run, "repro")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "Running stage" not in proc.stdout
    assert elapsed <= 0.05 * smoke_run.seconds, f"no-op repro took {elapsed:.1f} s of a {smoke_run.seconds:.0f} s build"


def test_exp_run_on_one_stage_reruns_it_and_its_downstream_only(smoke_run):
    proc = dvc(smoke_run, "exp", "run", "-S", "profiles.smoke.stages.kv-1024.steps=3", worker=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
    # features re-checks its content keys (a no-op: its output is unchanged), then training re-runs
    # the changed stage and what stands on it
    assert ran & set(TRAINED) == {"kv-1024", "kv-2k"}, proc.stdout
    # the KV ablation's arm is kv-1024's row with its change over it: it trains again, and is compared again
    assert "kv-1024-uncompressed" in ran and "align-raw-120" not in ran, proc.stdout
    assert ran - set(TRAINED) <= {"features", "pixeval", "kv-1024-uncompressed", "ablations"}, proc.stdout
    info = json.loads((smoke_run.root / "outputs/kv-1024/stage.json").read_text())
    assert info["step"] == 3
