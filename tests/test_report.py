"""`pixart report`: the results page is rendered from the metrics files the stages write, marks what
`dvc status` finds changed as stale, and is byte-reproducible. No training: the metrics are written
by the stages' own writers from made-up numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pixart import atomic, report
from pixart.cli import app
from pixart.config import load_profile
from pixart.data.caption_stats import CaptionStats
from pixart.eval.few_step import table4
from pixart.eval.fid import compute_statistics
from pixart.eval.pixeval import save_grid, write_reports
from pixart.eval.trend import alignment_gain, fid_gain
from pixart.rendered import Drift

REPO = Path(__file__).resolve().parent.parent
# a distinct solid colour per stage's grid, to see the strip's order
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200), (30, 200, 200),
           (120, 60, 0), (0, 60, 120), (90, 90, 90), (160, 160, 220)]


def _pixeval_results(stages: list[str]) -> dict[str, dict]:
    """What stages.pixeval hands write_reports: one stage's judge refused, the rest judged."""
    results = {}
    for i, stage in enumerate(stages):
        results[stage] = {"fid": 300.0 - 17.371 * i, "seconds_per_image": 0.0123 * (i + 1), "n_images": 16,
                          "sampler": "DPM-Solver 20 steps, CFG 4.5", "vae_ceiling_fid": 40.25 + i,
                          "alignment": 0.1 + 0.05 * i, "alignment_shuffled": 0.031 + 0.001 * i,
                          "judge_accuracy": 0.9, "vae_ceiling_alignment": 0.8}
    results[stages[1]] |= {"alignment": "judge refused: 0.412"}
    del results[stages[1]]["alignment_shuffled"]
    return results


def _lock(profile) -> dict:
    """A dvc.lock of the profile's DAG shape: prepare-data → stages (by init_from) → pixeval."""
    def stage(deps, outs):
        return {"cmd": "python -m x", "deps": [{"path": d, "md5": "0"} for d in deps],
                "outs": [{"path": o, "md5": "0"} for o in outs]}

    stages = {"prepare-data": stage([], ["data/train", "data/heldout"]),
              "caption-stats": stage(["data/train"], ["metrics/caption_stats.json"]),
              "vaes": stage(["data/train"], ["outputs/vae-old", "outputs/vae-new", "metrics/vaes.json"])}
    for name, cfg in profile.stages.items():
        weak = [f"outputs/{cfg.init_from}"] if cfg.init_from else []
        stages[name] = stage(["data/train", f"outputs/vae-{cfg.vae}", *weak], [f"outputs/{name}"])
    stages["pixeval"] = stage(["data/heldout", *(f"outputs/{n}" for n in profile.stages)],
                              ["metrics/pixeval", "metrics/pixeval.json", "metrics/pixeval_trend.json"])
    return {"schema": "2.0", "stages": stages}


@pytest.fixture
def up_to_date(monkeypatch):
    """`dvc status` with nothing changed; a test sets ``state["status"]`` to what it should report."""
    state = {"status": {}}
    monkeypatch.setattr(report, "dvc_status", lambda root: state["status"])
    return state


@pytest.fixture
def project(tmp_path, up_to_date) -> Path:
    """A project root holding params.yaml, dvc.lock and every metrics file the stages write."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    _, profile = load_profile(None, tmp_path / "params.yaml")
    stages = list(profile.stages)
    metrics = tmp_path / "metrics"
    write_reports(metrics, _pixeval_results(stages))
    rng = np.random.default_rng(0)
    reference = compute_statistics(rng.normal(size=(12, 4)))
    trend = fid_gain(rng.normal(size=(12, 4)) + 1, rng.normal(size=(12, 4)), reference, n_resamples=50)
    claim = alignment_gain(rng.uniform(0, 0.3, 12), rng.uniform(0.2, 0.6, 12), n_resamples=50)
    atomic.write_json(metrics / "pixeval_trend.json", {"weak": stages[0], "strong": "kv-2k", **trend,
                                                       "caption_before": "vae-adapt", "caption_after": "align", **claim})
    rows = {"raw": CaptionStats("raw", 640, 12, 40, 1900, 7.25, 2.97),
            "dense": CaptionStats("dense", 640, 31, 55, 6100, 24.5, 9.53)}
    atomic.write_json(metrics / "caption_stats.json", {k: r.to_dict() for k, r in rows.items()})
    atomic.write_json(metrics / "vaes.json", {"old": {"heldout_mse": 0.0412, "heldout_object_mse": 0.2301},
                                              "new": {"heldout_mse": 0.0198, "heldout_object_mse": 0.1107}})
    results = _pixeval_results(stages)
    by_steps = {n: {**results["lcm"], "seconds_per_image": 0.002 * n, "fid": 250.0 - n} for n in (1, 2, 4)}
    atomic.write_json(metrics / "table4.json", {"tables": [table4(profile, "lcm", results, by_steps, 20)]})
    audit = {source: {"hallucination": h, "recall": r, "exact": e, "avg_caption_words": w, "avg_nouns_per_image": n,
                      "valid_distinct_nouns": 9, "distinct_nouns": 12}
             for source, h, r, e, w, n in (("raw", 0.061, 0.72, 0.0, 4.3, 1.9), ("recaption", 0.012, 0.985, 0.93, 27.1, 5.2),
                                           ("truth", 0.0, 1.0, 1.0, 27.4, 5.3))}
    atomic.write_json(metrics / "recaption.json", {"sources": audit, "captioned": {"train": 10, "heldout": 4}})
    atomic.write_text(metrics / "recaption" / "panels.md", "# panels\n")
    for stage, colour in zip(stages, COLOURS, strict=True):
        pixels = profile.pixels(profile.stages[stage]) // 8
        save_grid(np.full((16, pixels, pixels, 3), colour, np.uint8), metrics / "pixeval" / f"{stage}.png")
    curves = [f"{stage},{step},{1.0 / (step + i + 1):.6g}" for i, stage in enumerate(stages[:3]) for step in range(1, 9)]
    atomic.write_text(metrics / "loss_curves.csv", "\n".join(["stage,step,loss", *curves]) + "\n")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(_lock(profile), sort_keys=False))
    report.record(tmp_path)
    return tmp_path


def _row(page: str, stage: str, section: str = "## PixEval") -> list[str]:
    """The cells of ``stage``'s row in the first table after ``section``."""
    body = page.split(section, 1)[1]
    line = next(line for line in body.splitlines() if line.startswith(f"| `{stage}` |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _page(root: Path) -> str:
    report.write(root)
    return (root / report.PAGE).read_text()


def test_page_shows_each_stages_numbers_from_the_metrics_files(project):
    page = _page(project)
    results = yaml.safe_load((project / report.METRICS / "pixeval.json").read_text())
    _, profile = load_profile(None, project / "params.yaml")
    for stage, m in results.items():
        cells = _row(page, stage)
        assert cells[1] == str(profile.pixels(profile.stages[stage]))
        assert cells[2] == f"{m['fid']:.2f}"
        assert cells[5] == f"{m['vae_ceiling_fid']:.2f}"
        assert cells[-1] == "current"
    assert _row(page, "vae-adapt")[3:5] == ["judge refused: 0.412", "—"]
    trend = yaml.safe_load((project / report.METRICS / "pixeval_trend.json").read_text())
    assert f"| `base` | `kv-2k` | {trend['fid_gain']:.2f} | {trend['fid_gain_low']:.2f} … " \
           f"{trend['fid_gain_high']:.2f} | {trend['fid_gain_share'] * 100:.1f} % | current |" in page
    assert f"| `vae-adapt` | `align` | {trend['alignment_gain']:.3f} | {trend['alignment_gain_low']:.3f} … " \
           f"{trend['alignment_gain_high']:.3f} | {trend['alignment_gain_share'] * 100:.1f} % | current |" in page
    align = results["align"]
    assert _row(page, "align")[7:9] == [f"{align['alignment'] / align['alignment_shuffled']:.1f}×",
                                        f"{100 * align['alignment'] / align['vae_ceiling_alignment']:.0f} %"]
    assert "| dense | 640 | 31/55 | 6100 | 24.50 | 9.53 |" in page
    assert "| `old` | 0.0412 | 0.2301 |" in page
    assert "Generated by `pixart report`" in page and "do not edit by hand" in page.splitlines()[0]


def test_memory_plan_is_what_pixart_train_memory_estimates_for_xl(project):
    from pixart.models.specs import get_spec
    from pixart.train import memory

    page = _page(project)
    _, xl = load_profile("xl", project / "params.yaml")
    stage = xl.stages["aes-1024"]
    micro = stage.batch_size // stage.num_gpus
    for zero in (0, 1, 2):
        e = memory.estimate(get_spec("xl"), 1024, zero, num_gpus=stage.num_gpus, micro_batch=micro,
                            n_params=report._n_params("xl"))
        assert f"| 1024 | `aes-1024` | {zero} | {stage.num_gpus} | {micro} | {e.tokens} | " \
               f"{e.params / 2**30:.2f} | {e.grads / 2**30:.2f} | {e.optimizer_states / 2**30:.2f} | " \
               f"{e.activations / 2**30:.2f} | {e.total / 2**30:.2f} |" in page
    assert "| 2048 | `aes-2k` | 2 |" in page


def test_stage_changed_in_dvc_status_is_stale_with_everything_downstream(project, up_to_date):
    up_to_date["status"] = {"aes-512": [{"changed deps": {
        "params.yaml": {"profiles.tiny.stages.aes-512.lr": "modified"}}}]}
    page = _page(project)
    for stage in ("base", "vae-adapt", "align"):
        assert _row(page, stage)[-1] == "current"
    for stage in ("aes-512", "aes-1024", "kv-1024", "aes-2k", "kv-2k", "dmd"):
        assert _row(page, stage)[-1] == "stale"
    assert _row(page, "base", "## Weak to strong")[-1] == "stale"  # its strong stage follows the change
    reason = "stale: `params.yaml: profiles.tiny.stages.aes-512.lr modified`"
    assert _row(page, "aes-512", "## Stages")[-1] == reason
    assert _row(page, "kv-2k", "## Stages")[-1] == "stale: downstream of a changed stage"
    assert "Status: current." in page.split("## Caption statistics", 1)[1].split("##", 1)[0]


def test_hand_edited_pixeval_metrics_make_every_pixeval_row_stale(project, up_to_date):
    up_to_date["status"] = {"pixeval": [{"changed outs": {"metrics/pixeval.json": "modified"}}]}
    page = _page(project)
    for stage in load_profile(None, project / "params.yaml")[1].stages:
        assert _row(page, stage)[-1] == "stale"


def test_outputs_absent_from_the_checkout_are_not_changes(project, up_to_date):
    # a fresh clone before `dvc pull`: what the lock records is not here, which changes nothing
    up_to_date["status"] = {"base": [{"changed outs": {"outputs/base": "not in cache"}}],
                            "pixeval": [{"changed deps": {"outputs/base": "deleted"}}]}
    page = _page(project)
    assert _row(page, "base")[-1] == "current"
    assert "stale" not in page


def test_check_fails_after_a_hand_edit_and_passes_after_a_rerender(project):
    runner = CliRunner()
    (project / report.PAGE).unlink()
    assert runner.invoke(app, ["report", "--check", "--root", str(project)]).exit_code == 1  # never rendered
    assert runner.invoke(app, ["report", "--root", str(project)]).exit_code == 0
    assert runner.invoke(app, ["report", "--check", "--root", str(project)]).exit_code == 0
    page = project / report.PAGE
    page.write_text(page.read_text().replace(_row(page.read_text(), "base")[2], "1.00", 1))
    result = runner.invoke(app, ["report", "--check", "--root", str(project)])
    assert result.exit_code == 1 and "pixart report" in result.output
    assert runner.invoke(app, ["report", "--root", str(project)]).exit_code == 0
    assert runner.invoke(app, ["report", "--check", "--root", str(project)]).exit_code == 0


def test_a_stage_run_again_after_the_recording_is_stale_until_recorded(project):
    lock_file = project / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text())
    lock["stages"]["aes-1024"]["outs"][0]["md5"] = "0" * 32 + ".dir"  # it ran again: other weights
    lock_file.write_text(yaml.safe_dump(lock, sort_keys=False))
    atomic.write_json(project / report.RUN_METRICS / "vaes.json", {"old": {"heldout_mse": 0.5, "heldout_object_mse": 0.6}})
    (project / report.RUN_METRICS / ".gitignore").write_text("/pixeval.json\n")  # what DVC writes there
    page = _page(project)
    assert _row(page, "align")[-1] == "current"
    for stage in ("aes-1024", "kv-1024", "aes-2k", "kv-2k"):
        assert _row(page, stage)[-1] == "stale"
    assert "ran again after the reference was recorded" in _row(page, "aes-1024", "## Stages")[-1]
    assert "| `old` | 0.0412 | 0.2301 |" in page  # the reference, not the unrecorded run

    result = CliRunner().invoke(app, ["report", "--record", "--root", str(project)])
    assert result.exit_code == 0, result.output
    page = (project / report.PAGE).read_text()
    assert "stale" not in page and "| `old` | 0.5000 | 0.6000 |" in page
    assert (project / report.METRICS / "dvc.lock").read_text() == lock_file.read_text()
    assert not (project / report.METRICS / ".gitignore").exists()


def test_recording_without_a_run_fails_naming_what_is_missing_and_keeps_the_reference(project):
    shutil.rmtree(project / report.RUN_METRICS)
    before = (project / report.METRICS / "pixeval.json").read_text()
    result = CliRunner().invoke(app, ["report", "--record", "--root", str(project)])
    assert result.exit_code == 2 and "metrics: absent" in result.output
    assert (project / report.METRICS / "pixeval.json").read_text() == before


def test_check_fails_when_the_metrics_change_under_a_committed_page(project):
    report.write(project)
    report.check(project)
    atomic.write_json(project / report.METRICS / "vaes.json", {"old": {"heldout_mse": 0.5, "heldout_object_mse": 0.6}})
    with pytest.raises(Drift, match="results.md"):
        report.check(project)


def _outputs(root: Path) -> dict[str, bytes]:
    report.write(root)
    return {name: (root / "docs" / name).read_bytes()
            for name in ("results.md", *(f"results/{name}" for name in report.IMAGE_NAMES))}


@pytest.mark.parametrize("matplotlib", [True, False], ids=["matplotlib", "pil"])
def test_rendering_twice_gives_identical_bytes(project, monkeypatch, matplotlib):
    if matplotlib:
        pytest.importorskip("matplotlib")
    monkeypatch.setattr(report, "_has_matplotlib", lambda: matplotlib)
    first = _outputs(project)
    second = _outputs(project)
    assert first == second
    for name in report.IMAGE_NAMES:
        data = first[f"results/{name}"]
        assert data.startswith(b"\x89PNG") and b"tIME" not in data and b"Software" not in data


def test_stage_strip_tiles_every_grid_in_curriculum_order_at_one_height(project):
    report.write(project)
    stages = list(load_profile(None, project / "params.yaml")[1].stages)
    with Image.open(project / report.IMAGES / report.STAGES_PNG) as strip:
        strip = strip.convert("RGB")
    step = report.GRID_HEIGHT + report.GRID_GAP
    assert strip.size == (step * len(stages) - report.GRID_GAP, report.GRID_HEIGHT + report.LABEL_HEIGHT)
    middle = report.LABEL_HEIGHT + report.GRID_HEIGHT // 2
    for i, colour in enumerate(COLOURS[: len(stages)]):
        assert strip.getpixel((i * step + report.GRID_HEIGHT // 2, middle)) == colour


def test_loss_curves_are_one_panel_per_stage_that_logged_a_loss(project):
    page = _page(project)
    assert f"![Training loss by stage](results/{report.LOSSES_PNG})" in page
    with Image.open(project / report.IMAGES / report.LOSSES_PNG) as chart:
        assert chart.size == (3 * 240, 160)  # three stages logged a loss
        chart = chart.convert("RGB")
        # each panel draws its curve: some pixel of the plotting colour in each third
        for i in range(3):
            panel = chart.crop((i * 240, 0, (i + 1) * 240, 160))
            assert report._COLOURS[0] in {colour for _, colour in panel.getcolors(240 * 160)}
    (project / report.METRICS / "loss_curves.csv").write_text("stage,epoch\nbase,1\n")
    with pytest.raises(report.ReportError, match="loss_curves.csv"):
        report.write(project)


def test_missing_metrics_give_not_recorded_lines_and_no_images(tmp_path, up_to_date):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    page = _page(tmp_path)
    for line in ("PixEval: not recorded (no `docs/results/metrics/pixeval.json`).",
                 "The trend: not recorded (no `docs/results/metrics/pixeval_trend.json`).",
                 "Sample grids: not recorded (no `docs/results/metrics/pixeval/<stage>.png`).",
                 "Caption statistics: not recorded (no `docs/results/metrics/caption_stats.json`).",
                 "VAE reconstruction errors: not recorded (no `docs/results/metrics/vaes.json`).",
                 "Loss curves: not recorded (no `docs/results/metrics/loss_curves.csv`).",
                 "Stages: not recorded (no `docs/results/metrics/dvc.lock`).",
                 "`docs/results/metrics/dvc.lock` is absent: no DVC run is recorded"):
        assert line in page
    assert "](results/" not in page
    assert not (tmp_path / report.IMAGES).exists() or not any((tmp_path / report.IMAGES).iterdir())
    report.check(tmp_path)


def test_missing_wall_times_say_not_recorded_and_recorded_ones_are_shown(project):
    page = _page(project)
    assert "Wall times: not recorded (no `docs/results/metrics/stage_times.json`; DVC records none)." in page
    assert _row(page, "base", "## Stages")[1] == "—"
    atomic.write_json(project / report.METRICS / "stage_times.json", {"base": 75.4, "pixeval": 3725})
    page = _page(project)
    assert "Wall times: not recorded" not in page
    assert _row(page, "base", "## Stages")[1] == "1 min 15 s"
    assert _row(page, "pixeval", "## Stages")[1] == "1 h 02 min"
    assert _row(page, "align", "## Stages")[1] == "not recorded"


def test_dvc_status_that_cannot_run_is_said_on_the_page_and_nothing_is_current(project, monkeypatch):
    monkeypatch.undo()  # the real `dvc status`, in a folder that is no DVC repository
    page = _page(project)
    assert "`dvc status` failed" in page and "is unknown" in page
    assert _row(page, "base")[-1] == "unknown"
    assert "current" not in page.split("## PixEval", 1)[1]


def test_table4_lists_dmd_lcm_steps_and_the_teacher_with_their_speed_ups(project):
    page = report.render_page(report.load(project))
    body = page.split("## One step and few steps (Table 4)", 1)[1].split("## ", 1)[0]
    rows = [line.split(" | ") for line in body.splitlines() if line.startswith(("| DMD", "| LCM", "| teacher"))]
    assert [(r[0].strip("| "), r[2]) for r in rows] == [("DMD", "1"), ("LCM", "1"), ("LCM", "2"), ("LCM", "4"),
                                                       ("teacher", "20")]
    teacher_seconds = float(rows[-1][-3])
    assert rows[1][3] == "249.00" and rows[-1][-2] == "1.0×"
    assert float(rows[1][-2].rstrip("×")) == pytest.approx(teacher_seconds / 0.002, rel=0.05)
    assert "The paper's Table 4" in body and "108.66" in body


def test_the_recaption_audit_shows_each_source_and_links_its_panels(project):
    page = report.render_page(report.load(project))
    body = page.split("## Recaption audit", 1)[1].split("## ", 1)[0]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in body.splitlines()
            if line.startswith(("| raw", "| recaption", "| truth"))}
    assert list(rows) == ["raw", "recaption", "truth"]
    assert rows["recaption"][1:4] == ["0.012", "0.985", "0.930"] and rows["raw"][1] == "0.061"
    assert "Dense-caption stages train on: recaption." in body
    assert "(results/metrics/recaption/panels.md)" in body
    report.check(project)  # the page links a file that is there
