"""Ablations: the claims' arms in params.yaml and the DAG, and a claim's verdict from its paired interval."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from pixart import dag
from pixart.config import PARAMS_FILE, AblationConfig, ParamsError, load_profile
from pixart.eval.ablations import (
    NOT_RESOLVED,
    NOT_SUPPORTED,
    SUPPORTED,
    compare,
    differing_fields,
    table,
    verdict,
)
from pixart.eval.fid import Statistics
from pixart.eval.pixeval import StageEvaluation

_, TINY = load_profile("tiny")
_, SMOKE = load_profile("smoke")
CLAIMS = {"vae-adapt": "fid", "align": "alignment", "aes-512": "fid", "aes-1024": "fid", "kv-1024": "fid"}


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    mutate(raw["profiles"]["tiny"]["ablations"])
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def test_tiny_declares_the_five_claims_each_arm_from_its_stages_weak_input():
    assert {a.stage: a.metric for a in TINY.claims().values()} == CLAIMS
    arms = TINY.arms()
    for name, ablation in TINY.claims().items():
        stage = TINY.stages[ablation.stage]
        control = arms[f"{name}-control"] if ablation.controlled else stage
        assert arms[name].init_from == control.init_from == stage.init_from
        assert differing_fields(control, arms[name]) == sorted(ablation.changes)
        assert arms[name].steps == control.steps == (ablation.steps or stage.steps)
    # smoke drops three by null, keeps the one with a control arm and inherits one without
    assert list(SMOKE.claims()) == ["align-raw-120", "kv-1024-uncompressed"]
    assert set(SMOKE.arms()) == {"align-raw-120-control", "align-raw-120", "kv-1024-uncompressed"}


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda a: a["align-raw-120"]["changes"].update(captoin="raw"), "ablations.align-raw-120.changes"),
    (lambda a: a["align-raw-120"]["changes"].update(init_from="base"), "init_from: not ablatable"),
    (lambda a: a["align-raw-120"].update(stage="dmd"), "'dmd' is not a 'train' stage"),
    (lambda a: a["align-raw-120"]["changes"].update(caption="dense"), "equal the stage's own"),
    (lambda a: a["align-raw-120"]["changes"].update(vae="older"), "'older' is not one of vaes"),
    (lambda a: a["align-raw-120"]["changes"].update(max_tokens=0), "ablations.align-raw-120.changes"),
    (lambda a: a.update({"aes-512": a.pop("aes-512-all-data")}), "arm names ['aes-512'] are taken"),
    (lambda a: a["align-raw-120"].update(margin=0.1), "margin: only for expect 'no-worse'"),
])
def test_a_bad_ablation_is_refused_naming_it(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_profile("tiny", _write(tmp_path, mutate))


def test_the_dag_trains_each_arm_on_its_stages_inputs_and_no_main_stage_reads_an_ablation():
    stages = yaml.safe_load(dag.render())["stages"]
    for name, arm in TINY.arms().items():
        assert f"outputs/{arm.init_from}" in stages[name]["deps"]
        assert stages[name]["outs"] == [f"outputs/{name}"]
    # an arm that changes a feature field encodes its own set; the others read their stage's
    assert "features/aes-512-all-data" in stages["aes-512-all-data"]["deps"]
    assert "features/vae-adapt" in stages["align-raw-120"]["deps"] and "features/base" in stages["vae-adapt-on-old-vae"]["deps"]
    arms = set(TINY.arms()) | {"ablations", "features-aes-512-all-data"}
    for name, stage in stages.items():
        if name not in arms:
            assert not any(".ablations" in p for p in stage.get("params", [])), name
            assert not any(a in stage.get("deps", []) for a in (f"outputs/{arm}" for arm in TINY.arms())), name
    assert stages["ablations"]["metrics"] == ["metrics/ablations.json"]
    assert {f"outputs/{a}" for a in TINY.arms()} <= set(stages["ablations"]["deps"])
    # a claim at its stage's own steps reads the stage as its control, from PixEval's evaluations; one
    # with fewer steps, its control arm
    assert SMOKE.claims()["align-raw-120"].controlled and "align-raw-120-control" in SMOKE.arms()
    assert not any(a.controlled for a in TINY.claims().values()) and "outputs/align" in stages["ablations"]["deps"]
    assert "outputs/pixeval-evaluations" in stages["pixeval"]["outs"] and "outputs/pixeval-evaluations" in stages[
        "ablations"]["deps"]


def _ablation(**fields) -> AblationConfig:
    return AblationConfig.model_validate({"claim": "c", "stage": "s", "changes": {"lr": 1.0}, "metric": "fid", **fields})


def test_a_verdict_follows_the_interval_and_a_margin_allows_a_small_loss():
    better = _ablation()
    assert verdict(better, 100.0, 0.5, 3.0) == SUPPORTED
    assert verdict(better, 100.0, -3.0, -0.5) == NOT_SUPPORTED
    assert verdict(better, 100.0, -1.0, 1.0) == NOT_RESOLVED
    costs_little = _ablation(expect="no-worse", margin=0.1)
    assert verdict(costs_little, 100.0, -9.0, 2.0) == SUPPORTED       # loses at most 9 of the 10 allowed
    assert verdict(costs_little, 100.0, -11.0, 2.0) == NOT_RESOLVED
    assert verdict(costs_little, 100.0, -30.0, -12.0) == NOT_SUPPORTED


def test_a_row_is_the_paired_difference_of_its_arms_and_an_unjudged_alignment_claim_is_not_resolved():
    rng = np.random.default_rng(0)
    control = StageEvaluation({"fid": 1.0, "alignment": 0.8}, rng.normal(size=(32, 4)), np.full(32, 0.8))
    ablated = StageEvaluation({"fid": 2.0, "alignment": 0.3}, rng.normal(size=(32, 4)) + 2.0, np.full(32, 0.3))
    row = compare(_ablation(metric="alignment"), control, ablated, Statistics(np.zeros(4), np.eye(4), 32))
    assert row["gain"] == pytest.approx(0.5) and row["gain_low"] == pytest.approx(0.5) and row["verdict"] == SUPPORTED
    row = compare(_ablation(), control, ablated, Statistics(np.zeros(4), np.eye(4), 32))
    assert row["gain"] > 0 and row["verdict"] == SUPPORTED  # the ablated arm's features are far off the reference
    unjudged = StageEvaluation({"fid": 2.0}, ablated.features, None)
    assert compare(_ablation(metric="alignment"), control, unjudged, Statistics(np.zeros(4), np.eye(4), 32))["verdict"] == NOT_RESOLVED
    headers, cells = table({"x": {"claim": "c", "metric": "fid", "control": {"name": "s"}, "ablated": {"name": "x"},
                                  **row}})
    assert cells[0][headers.index("verdict")] == SUPPORTED and "`s` vs `x`" in cells[0]


def test_config_show_lists_the_arms_after_the_stages_with_their_pe_scale():
    from typer.testing import CliRunner

    from pixart.cli import app

    out = CliRunner().invoke(app, ["config", "show", "--profile", "tiny"]).stdout
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert set(TINY.trained()) <= set(rows)
    assert rows["aes-1024-no-pe-interpolation"].split("│")[6].strip() == "1"
    assert rows["aes-1024"].split("│")[6].strip() == "2"
