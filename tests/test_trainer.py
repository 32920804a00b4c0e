"""The DeepSpeed stage trainer on the smoke world: resume after SIGKILL, and ZeRO-2 over two processes."""

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
    import json

    from mlflow.tracking import MlflowClient

    run_id = json.loads((root / "outputs/base/stage.json").read_text())["mlflow_run_id"]
    history = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").get_metric_history(run_id, "loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


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
