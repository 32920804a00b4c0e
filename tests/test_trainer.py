"""The DeepSpeed stage trainer on the smoke world: resume after SIGKILL, ZeRO-2 over two processes, and
the base stage's loss curve against a committed golden one."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, SmokeRun, copy_repo

pytestmark = pytest.mark.slow
WEIGHTS = "outputs/base/transformer/diffusion_pytorch_model.safetensors"


def _world(smoke_run: SmokeRun, dst, **base) -> tuple:
    """A repo copy that reuses the smoke run's data, features and frozen components, with the base
    stage's params changed by ``base``."""
    root = copy_repo(dst, "smoke")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["profiles"]["smoke"]["stages"]["base"].update(base)
    raw["profiles"]["smoke"]["train"].update(log_every=1, save_every=2)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for part in ("data", "features", "outputs/text-encoder", "outputs/vae-old", "outputs/vae-new"):
        (root / part).parent.mkdir(parents=True, exist_ok=True)
        (root / part).symlink_to(smoke_run.root / part)
    env = {**smoke_run.env, "PIXART_ROOT": str(root)}
    return root, env


def _train(root, env, *launcher: str, **extra_env: str) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "stages.train", "base"] if launcher else [sys.executable, "-m", "stages.train", "base"]
    return subprocess.run(cmd, cwd=root, env={**env, **extra_env}, capture_output=True, text=True, check=False)


def _loss_curve(root) -> list[float]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((root / "outputs/base/stage.json").read_text())["mlflow_run_id"]
    history = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").get_metric_history(run_id, "loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def _stage_runs(root, stage: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("pixart-curriculum").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.stage = '{stage}'",
                              order_by=["attributes.start_time ASC"])


def test_resume_after_sigkill_matches_uninterrupted(smoke_run, tmp_path):
    straight, env_a = _world(smoke_run, tmp_path / "a", steps=6)
    killed, env_b = _world(smoke_run, tmp_path / "b", steps=6)
    assert _train(straight, env_a).returncode == 0

    crashed = _train(killed, env_b, PIXART_SIGKILL_AFTER_STEP="5")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert not (killed / "outputs/base").exists()
    resumed = _train(killed, env_b)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = load_file(straight / WEIGHTS), load_file(killed / WEIGHTS)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise: randomness is keyed by step, not by process
    assert _loss_curve(killed)[-1] == _loss_curve(straight)[-1]

    # no zombie run: the attempt that resumed closed the killed one's
    runs = _stage_runs(killed, "base")
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert runs[0].data.tags["pixart.resumed_by"] == runs[1].info.run_id


def test_two_processes_with_zero2_follow_the_one_process_loss_curve(smoke_run, tmp_path):
    one, env_1 = _world(smoke_run, tmp_path / "one", steps=6, batch_size=4)
    two, env_2 = _world(smoke_run, tmp_path / "two", steps=6, batch_size=4)
    assert _train(one, env_1).returncode == 0
    torchrun = shutil.which("torchrun", path=str(REPO / ".venv/bin"))
    proc = _train(two, env_2, torchrun, "--nproc_per_node", "2", "--master_port", "29611",
                  OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve_1, curve_2 = _loss_curve(one), _loss_curve(two)
    assert len(curve_1) == len(curve_2) == 6
    # same global batch and the same per-sample noise; only the all-reduce's summation order differs
    torch.testing.assert_close(torch.tensor(curve_2), torch.tensor(curve_1), rtol=1e-4, atol=1e-6)


GOLDEN = REPO / "tests/golden/base_loss_curve.json"
REGENERATE = "PIXART_REGENERATE_GOLDEN"
# 60 steps at batch 8 on the debug spec: ~25 s, and a fall the lr schedule's warm-up does not hide
GOLDEN_BASE = {"steps": 60, "batch_size": 8, "warmup_steps": 10}
# the curve is bitwise on one machine (randomness keyed by (seed, step)); 1 % leaves room for
# another CPU's summation order, while lr 0 is off by 0.3 % at step 2 and by 20-40 % from step 20
GOLDEN_RTOL = 1e-2
FALL = 0.8  # the last ten steps' mean loss is at most 80 % of the first ten's (measured: 69 %; lr 0: 99 %)


def test_base_stage_loss_curve_falls_and_matches_the_golden_curve(smoke_run, tmp_path):
    root, env = _world(smoke_run, tmp_path / "golden", **GOLDEN_BASE)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["profiles"]["smoke"]["train"]["save_every"] = 10**6  # resumable saves cost time, change no loss
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = _train(root, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = _loss_curve(root)
    assert len(curve) == GOLDEN_BASE["steps"]

    first, last = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert last <= FALL * first, f"the base stage did not learn: mean loss {first:.4f} over steps 1-10, {last:.4f} over the last 10"

    if os.environ.get(REGENERATE) == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({
            "what": "MLflow 'loss' per step of the smoke base stage with the overrides below "
                    "(tests/test_trainer.py::test_base_stage_loss_curve_falls_and_matches_the_golden_curve)",
            "regenerate": f"{REGENERATE}=1 .venv/bin/python -m pytest -q tests/test_trainer.py -k golden",
            "base": GOLDEN_BASE, "loss": curve,
        }, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["base"] == GOLDEN_BASE, f"{GOLDEN} was made with other overrides; regenerate it with {REGENERATE}=1"
    off = [(step, value, want) for step, (value, want) in enumerate(zip(curve, golden["loss"], strict=True), start=1)
           if abs(value - want) > GOLDEN_RTOL * abs(want)]
    assert not off, (f"{len(off)} steps leave the golden curve by more than {GOLDEN_RTOL:.1%} (step, loss, golden): "
                     f"{off[:5]}; if the change is meant, regenerate {GOLDEN} with {REGENERATE}=1")
