"""The curriculum-local deployment on a real Prefect server and process worker, smoke profile, in a
copy of the repo (slow: the curriculum up to ``align``, then one retried stage). The deployment runs
``align`` and what it depends on (data, VAEs, recaption, features, base, vae-adapt): every kind of stage
and the recaption panels, in 240 s where the whole DAG took 640 s on a slow 2-core machine; the whole
DAG runs once, in tests/test_curriculum_e2e.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flows.plan import make_plan
from pixart.config import load_profile
from tests.conftest import REPO, copy_repo, subprocess_env
from tests.servers import HOST, Server, free_port, http_ready

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
_, SMOKE = load_profile("smoke")
POOL = "cpu"
TARGET = "align"  # the deployment run's stage: it and what it depends on


def _worker_registered(api: str):
    def check() -> bool:
        request = urllib.request.Request(f"{api}/work_pools/{POOL}/workers/filter", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(json.loads(response.read()))
        except OSError:
            return False

    return check


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory):
    """A copy of the repo (smoke profile), a Prefect server and a process worker serving it, with
    MLflow on a temp SQLite file; the servers are stopped by PID at the end."""
    tmp = tmp_path_factory.mktemp("flows-e2e")
    (tmp / "repo").mkdir()
    root = copy_repo(tmp / "repo", "smoke")
    port = free_port()
    api = f"http://{HOST}:{port}/api"
    env = subprocess_env("PREFECT_")
    env.update(PIXART_ROOT=str(root), PIXART_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
               PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "prefect-client"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = Server("prefect-server", [str(BIN / "prefect"), "server", "start"], http_ready(f"{api}/health"),
                    port=port, log_path=tmp / "server.log", startup_timeout=120,
                    env={**env, "PREFECT_HOME": str(tmp / "prefect-server"), "PREFECT_SERVER_API_HOST": HOST,
                         "PREFECT_SERVER_API_PORT": str(port)})
    worker = Server("prefect-worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                    _worker_registered(api), port=port, env=env, cwd=root, log_path=tmp / "worker.log",
                    startup_timeout=120)
    # the worker's env is the flow run's: nothing of the test process's PIXART_/PREFECT_ settings leaks in
    worker.env = env
    with server:
        with worker:
            yield root, env, api
        assert not worker.alive()
    assert not server.alive()


def _client_call(env: dict[str, str], script: str) -> object:
    """Run a Prefect/MLflow query in a fresh process with the run's env; its stdout is JSON."""
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def deployed_run(prefect_env):
    """curriculum-local deployed from the copy and triggered with the smoke profile for ``TARGET``."""
    root, env, _ = prefect_env
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "curriculum-local"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    script = (
        "import json\n"
        "from prefect.deployments import run_deployment\n"
        f"parameters = {{'profile': 'smoke', 'stages': [{TARGET!r}]}}\n"
        "run = run_deployment('curriculum/curriculum-local', parameters=parameters, timeout=1500, poll_interval=5)\n"
        "print(json.dumps({'id': str(run.id), 'state': run.state.type.value}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, check=False,
                         timeout=1600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deployment_run_completes_with_artifacts_and_mlflow_aliases(prefect_env, deployed_run):
    root, env, _ = prefect_env
    assert deployed_run["state"] == "COMPLETED", (root.parent / "worker.log").read_text()[-5000:]
    artifacts = _client_call(env, (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        f"        arts = await c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=['{deployed_run['id']}'])))\n"
        "        print(json.dumps({a.key: a.data for a in arts}))\n"
        "asyncio.run(main())\n"
    ))
    plan = make_plan(root, "smoke", list(SMOKE.stages), [TARGET])
    trained = [name for name in plan.curriculum if SMOKE.stages[name].kind == "train"]
    assert TARGET in trained and len(trained) >= 3, trained
    rows = json.loads(artifacts["pixeval-smoke"])
    assert [r["stage"] for r in rows] == list(plan.curriculum)
    assert all(r["this run"] == "ran" and r["model version"] != "none" for r in rows), rows
    for name in trained:
        assert "data:image/png;base64," in artifacts[f"samples-{name}"]
        assert f"| {name} | `runs:/" in artifacts["mlflow-smoke"]
    # the recaption stage's panels: each held-out image beside its three captions
    assert "| image | raw | recaption | truth |" in artifacts["recaption-smoke"]
    assert "ablations-smoke" not in artifacts  # the ablations stage was not in this run

    registry = _client_call(env, (
        "import json\n"
        "from pixart import tracking\n"
        f"names = {trained + ['champion']!r}\n"
        "print(json.dumps({n: tracking.get_alias_version(n) for n in names}))\n"
    ))
    assert all(registry[name] for name in trained), registry
    assert not (root / "metrics/pixeval").exists()
    # no PixEval: the champion is the latest curriculum stage that ran
    assert registry["champion"] == registry[TARGET]


def test_a_stage_killed_after_its_checkpoint_is_retried_and_resumes(prefect_env, deployed_run):
    root, env, _ = prefect_env
    params = root / "params.yaml"
    text = params.read_text()
    params.write_text(re.sub(r"\n      base: \{steps: 2, ", "\n      base: {steps: 4, ", text, count=1))
    assert params.read_text() != text, "smoke base stage line not found in params.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "flows.curriculum", "--profile", "smoke", "--stages", "base", "--retries", "1",
         "--no-promote"],
        cwd=root, env={**env, "PIXART_SIGKILL_AFTER_STEP": "2"}, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert json.loads((root / "outputs/base/stage.json").read_text())["step"] == 4
    attempts = _client_call(env, (
        "import json, mlflow\n"
        "from pixart import tracking\n"
        "tracking.configure()\n"
        "parent = mlflow.search_runs(experiment_names=['pixart-curriculum'], output_format='list',"
        " filter_string=\"tags.run_kind = 'curriculum'\", order_by=['attributes.start_time DESC'])[0]\n"
        "runs = mlflow.search_runs(experiment_names=['pixart-curriculum'], output_format='list',"
        " filter_string=f\"tags.stage = 'base' and tags.mlflow.parentRunId = '{parent.info.run_id}'\","
        " order_by=['attributes.start_time ASC'])\n"
        "print(json.dumps([[r.data.params['resumed_from_step'], r.info.status] for r in runs]))\n"
    ))
    # first attempt: from step 0, killed after saving step 2; the retry resumes at 2 and finishes
    assert attempts[0][0] == "0" and attempts[0][1] != "FINISHED", attempts
    assert attempts[-1] == ["2", "FINISHED"], attempts
    assert len(attempts) == 2, attempts
