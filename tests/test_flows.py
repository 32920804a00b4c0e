"""The curriculum flow's parts: planning from dvc.yaml, running one DVC stage, artifacts, deployment
files. Fast: a three-stage DVC project in a temp folder, no Prefect server."""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from flows.artifacts import NOT_RUN, StageRecord, links_markdown, pixeval_rows, samples_markdown
from flows.dvc_stage import StageFailed, StageTimeout, outcomes, push, repro, require_remote
from flows.plan import PlanError, active_profile, make_plan
from flows.stage import job_variables, launcher_env
from pixart.tracking import PARENT_RUN_ENV
from tests.conftest import REPO

PY = sys.executable


def _write(cmd: str) -> str:
    return f'{PY} -c "{cmd}"'


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    """a -> b, c independent, plus a failing and a hanging stage; params.yaml selects profile p."""
    root = tmp_path_factory.mktemp("dvcproj")
    subprocess.run([PY, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "params.yaml").write_text("profile: p\nprofiles:\n  p: {}\n")
    stages = {
        "a": {"cmd": _write("open('a.txt', 'w').write('a')"), "outs": ["a.txt"]},
        "b": {"cmd": _write("open('b.txt', 'w').write(open('a.txt').read() + 'b')"), "deps": ["a.txt"],
              "outs": ["b.txt"]},
        "c": {"cmd": _write("open('c.txt', 'w').write('c')"), "outs": ["c.txt"]},
        "fails": {"cmd": _write("print('boom'); raise SystemExit(3)"), "outs": ["never.txt"]},
        "hangs": {"cmd": _write("import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(300)"),
                  "outs": ["late.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def test_plan_runs_dependencies_first_and_reports_profile_stages_without_dvc_stage(dvc_project):
    plan = make_plan(dvc_project, "p", ["b", "x"], None)
    assert plan.stages == ("a", "b", "c", "fails", "hangs")
    assert plan.curriculum == ("b",) and plan.missing == ("x",)


def test_plan_of_a_subset_adds_what_it_depends_on_only(dvc_project):
    assert make_plan(dvc_project, "p", ["b"], ["b"]).stages == ("a", "b")


def test_plan_rejects_a_stage_dvc_yaml_lacks(dvc_project):
    with pytest.raises(PlanError, match=r"\['nope'\] are not stages of .*dvc.yaml"):
        make_plan(dvc_project, "p", [], ["nope"])


def test_a_run_cannot_switch_the_profile_params_yaml_selects(dvc_project):
    assert active_profile(dvc_project, None) == "p"
    assert active_profile(dvc_project, "p") == "p"
    with pytest.raises(PlanError, match=r"'xl' was requested but .*params.yaml selects 'p'"):
        active_profile(dvc_project, "xl")


def test_repro_runs_a_stage_then_skips_it_when_unchanged(dvc_project):
    lines: list[str] = []
    assert repro(dvc_project, "a", timeout_s=120, log=lines.append) == "ran"
    assert (dvc_project / "a.txt").read_text() == "a"
    assert repro(dvc_project, "a", timeout_s=120, log=lines.append) == "skipped"
    assert any("Running stage 'a'" in line for line in lines)


def test_repro_of_a_failing_stage_raises_with_its_output(dvc_project):
    with pytest.raises(StageFailed, match="(?s)exited with .*boom"):
        repro(dvc_project, "fails", timeout_s=120, log=lambda _: None)


def test_timeout_stops_the_stage_process_tree(dvc_project):
    with pytest.raises(StageTimeout, match="timeout of 8 s"):
        repro(dvc_project, "hangs", timeout_s=8, log=lambda _: None)
    pid = int((dvc_project / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_outcomes_tell_a_run_from_a_run_cache_restore_and_a_skip():
    output = ("Stage 'a' didn't change, skipping\n"
              "Stage 'b' is cached - skipping run, checking out outputs\n"
              "Pulling data for stage: 'c'\nUnable to pull data for stage: 'c'\nRunning stage 'c':\n> python c.py\n"
              "Running stage 'd':\n> echo \"Running stage 'e':\"\n")
    assert outcomes(output) == {"a": "skipped", "b": "restored", "c": "ran", "d": "ran"}


@pytest.fixture
def origin(tmp_path) -> Path:
    """A git repo whose dvc.yaml is a -> b (each stage counts its runs in runs.log, outside DVC's outs)
    and a local DVC remote; no dvc.lock is committed, as on a cluster."""
    root, remote = tmp_path / "origin", tmp_path / "remote"
    root.mkdir()
    count = "open('../runs.log', 'a').write('{}'); "
    stages = {
        "a": {"cmd": _write(count.format("a") + "open('a.txt', 'w').write('a'); open('a.json', 'w').write('1')"),
              "deps": ["params.yaml"], "outs": ["a.txt"], "metrics": ["a.json"]},
        "b": {"cmd": _write(count.format("b") + "open('b.txt', 'w').write(open('a.txt').read() + 'b')"),
              "deps": ["a.txt"], "outs": ["b.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / "params.yaml").write_text("profile: p\nprofiles:\n  p: {}\n")
    for cmd in (["git", "init", "-q"], [PY, "-m", "dvc", "init", "-q"],
                [PY, "-m", "dvc", "remote", "add", "-d", "shared", str(remote)], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "origin"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def _pod(origin: Path, name: str) -> Path:
    """A fresh clone, as a stage's pod starts: no dvc.lock, no outputs, its own DVC cache."""
    pod = origin.parent / name
    subprocess.run(["git", "clone", "-q", str(origin), str(pod)], check=True)
    return pod


def test_pods_restore_upstream_stages_from_the_run_cache_and_run_each_stage_once(origin):
    lines: list[str] = []
    pods = [_pod(origin, f"pod-{n}") for n in range(3)]
    assert repro(pods[0], "a", timeout_s=120, pull=True, log=lines.append) == "ran"
    push(pods[0], timeout_s=120, log=lines.append)
    assert repro(pods[1], "b", timeout_s=120, pull=True, log=lines.append) == "ran"
    push(pods[1], timeout_s=120, log=lines.append)
    # a retried pod finds its stage in the run cache; a cache: true metric comes back with it
    assert repro(pods[2], "b", timeout_s=120, pull=True, log=lines.append) == "restored"
    assert (pods[2] / "b.txt").read_text() == "ab" and (pods[2] / "a.json").is_file()
    assert (origin.parent / "runs.log").read_text() == "ab"
    assert not any("upstream stages ran here" in line for line in lines)


def test_a_pod_without_a_dvc_remote_fails_before_its_stage_runs(dvc_project):
    with pytest.raises(RuntimeError, match="no default DVC remote"):
        require_remote(dvc_project)


def test_a_dispatched_training_stage_gets_its_gpus_and_the_deepspeed_launcher():
    env = launcher_env(8, "parent-id")
    assert (env["PIXART_LAUNCHER"], env["PIXART_NUM_GPUS"], env[PARENT_RUN_ENV]) == ("deepspeed", "8", "parent-id")
    data_env = launcher_env(None, "parent-id")
    assert data_env.get("PIXART_LAUNCHER") == os.environ.get("PIXART_LAUNCHER")
    assert job_variables(8) == {"gpus": 8} and job_variables(None) == {"gpus": 1}


def test_gpu_job_template_requests_the_gpus_variable_and_defines_every_placeholder():
    template = json.loads((REPO / "infra/prefect/gpu-job-template.json").read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= set(template["variables"]["properties"]), used - set(template["variables"]["properties"])
    assert set(job_variables(1)) <= set(template["variables"]["properties"])


def test_crashed_run_automation_is_a_valid_prefect_automation():
    from prefect.events.schemas.automations import AutomationCore

    automation = AutomationCore.model_validate(
        yaml.safe_load((REPO / "infra/prefect/crashed-run-automation.yaml").read_text()))
    assert automation.trigger.posture == "Proactive" and "prefect.flow-run.heartbeat" in automation.trigger.expect
    assert automation.actions[0].type == "change-flow-run-state" and automation.actions[0].state == "CRASHED"


def test_prefect_yaml_deployments_load_their_flows_with_known_parameters():
    from prefect import Flow

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert {"curriculum-local", "curriculum-gpu", "stage-gpu"} <= set(deployments)
    assert deployments["curriculum-local"]["schedules"][0]["cron"]
    assert deployments["curriculum-gpu"]["parameters"]["execution"] == "deployment"
    for deployment in deployments.values():
        path, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(flow, Flow)
        assert set(deployment.get("parameters", {})) <= set(flow.parameters.properties), deployment["name"]


def test_pixeval_table_reads_metrics_files_and_says_not_run_otherwise(tmp_path):
    (tmp_path / "pixeval").mkdir()
    (tmp_path / "pixeval" / "align.json").write_text(json.dumps({"fid": 41.5, "alignment": 0.62}))
    records = {"base": StageRecord("base", "1", "r1"), "align": StageRecord("align", "2", "r2")}
    rows = pixeval_rows(["base", "align"], {"base": "skipped", "align": "ran"}, tmp_path, records)
    assert rows[0] == {"stage": "base", "this run": "skipped", "model version": "1", "pixeval": NOT_RUN}
    assert rows[1] == {"stage": "align", "this run": "ran", "model version": "2", "fid": 41.5, "alignment": 0.62}


def test_links_point_at_the_mlflow_ui_or_give_uris_for_a_file_store():
    records = [StageRecord("base", "3", "abc123")]
    web = links_markdown(records, "http://mlflow:5000/", "7", "pixart-sigma")
    assert "(http://mlflow:5000/#/experiments/7/runs/abc123)" in web
    assert "(http://mlflow:5000/#/models/pixart-sigma/versions/3)" in web
    local = links_markdown(records, "sqlite:///x/mlflow.db", "7", "pixart-sigma")
    assert "`runs:/abc123`" in local and "`models:/pixart-sigma/3`" in local


def test_sample_grid_is_inlined_when_present_and_skipped_when_absent(tmp_path):
    grid = tmp_path / "samples.png"
    Image.new("RGB", (8, 8), "red").save(grid)
    markdown = samples_markdown("base", grid)
    encoded = re.search(r"base64,([A-Za-z0-9+/=]+)\)", markdown).group(1)
    assert base64.b64decode(encoded) == grid.read_bytes()
    assert samples_markdown("base", tmp_path / "missing.png") is None


def test_the_ablations_artifact_is_the_claims_table_one_row_per_claim():
    from flows.artifacts import ablations_markdown

    row = {"claim": "dense captions help", "metric": "alignment", "expect": "better", "stage_value": 0.6,
           "ablation_value": 0.3, "gain": 0.3, "gain_low": 0.2, "gain_high": 0.4, "verdict": "supported",
           "control": {"name": "align"}, "ablated": {"name": "align-raw-120"}}
    lines = ablations_markdown({"align-raw-120": row}).splitlines()
    assert lines[:2] == ["# Ablations", ""] and lines[3].startswith("|---|")
    assert len(lines) == 5 and lines[4].startswith("| dense captions help |") and lines[4].endswith("| supported |")
    assert "`align` vs `align-raw-120`" in lines[4] and "0.300 [0.200, 0.400]" in lines[4]
