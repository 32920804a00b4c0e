"""The xl DAG rehearsed end to end on CPU: `dvc repro` of the xl-rehearsal profile (xl with only its
sizes shrunk) from a copy of the repo, with the user's inputs laid out as users download and collect
them: stand-ins of every pretrained part under pretrained/ and a folder of real images with .txt
captions under data/source. bf16, CAME, ZeRO-2, gradient checkpointing and two processes per stage
come from xl's own settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pixart.config import load_profile
from tests.conftest import REPO, SmokeRun, copy_repo, dvc, subprocess_env
from tests.helpers_data import emoji_codepoints, require_emoji_font, write_emoji

pytestmark = pytest.mark.slow
N_IMAGES = 40


@dataclass
class Rehearsal(SmokeRun):
    stage_seconds: dict[str, float]


def _timed_repro(root: Path, env: dict[str, str]) -> tuple[int, str, dict[str, float]]:
    """`pixart worker -- dvc repro` as `make curriculum` runs it; each stage's wall time is the time
    from DVC's "Running stage" line to the next one (or to the end), DVC's own bookkeeping included."""
    cmd = [str(REPO / ".venv/bin/pixart"), "worker", "--", str(REPO / ".venv/bin/dvc"), "repro"]
    proc = subprocess.Popen(cmd, cwd=root, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, starts = [], []
    for line in proc.stdout:
        lines.append(line)
        match = re.match(r"Running stage '([^']+)'", line)
        if match:
            starts.append((match.group(1), time.perf_counter()))
    code, end = proc.wait(), time.perf_counter()
    ends = [t for _, t in starts[1:]] + [end]
    return code, "".join(lines), {name: round(stop - start, 1) for (name, start), stop in zip(starts, ends)}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> Rehearsal:
    require_emoji_font()
    root = copy_repo(tmp_path_factory.mktemp("xl-rehearsal"), "xl-rehearsal")
    env = {**subprocess_env(), "PIXART_ROOT": str(root), "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]}
    write_emoji(root / "data/source", [cp for cp in emoji_codepoints() if 0x1F400 <= cp][:N_IMAGES], dense=True)
    subprocess.run([str(REPO / ".venv/bin/pixart"), "pretrained", "stand-ins", str(root / "pretrained")],
                   cwd=root, env=env, check=True, capture_output=True)
    start = time.perf_counter()
    code, output, stage_seconds = _timed_repro(root, env)
    run = Rehearsal(root, env, time.perf_counter() - start, output, stage_seconds)
    assert code == 0, output[-6000:]
    (root / "rehearsal_times.json").write_text(json.dumps({"total_s": run.seconds, **run.stage_seconds}, indent=1))
    print(f"xl-rehearsal dvc repro: {run.seconds:.0f} s; per stage: {run.stage_seconds}")
    return run


def test_rehearsal_runs_every_stage_of_xl_and_pixeval_scores_each(rehearsal):
    _, xl = load_profile("xl")
    for name in xl.stages:
        info = json.loads((rehearsal.root / "outputs" / name / "stage.json").read_text())
        assert info["stage"] == name and info["model_version"], name
    pixeval = json.loads((rehearsal.root / "metrics/pixeval.json").read_text())
    assert set(pixeval) == set(xl.stages)
    for name, metrics in pixeval.items():
        assert metrics["fid"] > 0 and 0 <= metrics["clip_score"] <= 1, (name, metrics)
    status = dvc(rehearsal, "status")
    assert "up to date" in status.stdout, status.stdout


def test_rehearsal_trains_with_xls_precision_optimizer_and_two_processes(rehearsal):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{rehearsal.root}/mlflow.db")
    for name in ("vae-adapt", "kv-4k", "dmd"):
        run_id = json.loads((rehearsal.root / "outputs" / name / "stage.json").read_text())["mlflow_run_id"]
        params = client.get_run(run_id).data.params
        assert params["world_size"] == "2", name
        assert (params["train.precision"], params["train.optimizer"], params["train.zero_stage"]) == (
            "bf16", "came", "2"), name
        assert params["train.grad_checkpointing"] == "True", name


def test_rehearsal_checkpoint_loads_in_diffusers_as_fp32(rehearsal):
    import torch
    from diffusers import PixArtSigmaPipeline

    import pixart.models.transformer  # noqa: F401  (diffusers resolves our KV-compression class from it)

    pipe = PixArtSigmaPipeline.from_pretrained(rehearsal.root / "outputs/kv-4k", local_files_only=True)
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}
    assert len(pipe.transformer.transformer_blocks) == 28


def test_a_new_image_in_the_users_folder_makes_prepare_data_stale(rehearsal):
    write_emoji(rehearsal.root / "data/source", [0x1F600], dense=True)
    status = dvc(rehearsal, "status", "prepare-data")
    assert "changed deps" in status.stdout and "data/source" in status.stdout, status.stdout
