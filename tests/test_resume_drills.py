"""The crash drill for every variant of the training loop besides the stage trainer's own (which
tests/test_trainer.py drills on the smoke world): SIGKILL after a step that is not a save, resume,
and the exported weights equal an uninterrupted run's bit for bit."""

import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pixart.train.loop import SIGKILL_AFTER_STEP_ENV
from tests.conftest import REPO, subprocess_env
from tests.drills import STEPS


def _drill(variant: str, root, label: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.drills", variant, str(root), label], cwd=REPO,
                          env={**subprocess_env(), **env}, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("variant", ["dmd", "lcm", "vae"])
def test_a_killed_run_resumes_to_the_uninterrupted_weights(variant, tmp_path):
    straight = _drill(variant, tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    # step 3 of 4, saved every 2nd: the resume redoes step 3 from step 2's checkpoint
    killed = _drill(variant, tmp_path, "killed", **{SIGKILL_AFTER_STEP_ENV: str(STEPS - 1)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _drill(variant, tmp_path, "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = load_file(straight.stdout.strip().splitlines()[-1])
    b = load_file(resumed.stdout.strip().splitlines()[-1])
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
