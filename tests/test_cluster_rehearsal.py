"""The cluster, rehearsed on this machine: every stage up to the smoke curriculum's ``vae-adapt`` in
a pod of its own (a fresh ``git clone``: no dvc.lock, no outputs, its own DVC cache), each running the
stage-gpu deployment's flow (flows/stage.py ``curriculum_stage``) under a Prefect test server, one DVC
remote on moto S3 and one MLflow store shared by all. No stage runs twice: every pod restores its
upstream from the remote's run cache, and a last fresh clone restores all of it without running
anything. ``vae-adapt`` and its upstream hold every kind of pod (data, imported VAEs, sharded
features, a trained stage that restores a trained stage); the later stages would add pods of the
same kinds at ~60 s each (24 pods took 23 min on a slow 2-core machine). Smoke's ablations are left
out (``_without_ablations``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from flows.dvc_stage import outcomes
from flows.plan import make_plan
from pixart.config import load_profile
from tests.conftest import RENDEZVOUS, copy_repo
from tests.servers import HOST, Server, free_port, http_ready

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
_, SMOKE = load_profile("smoke")
BUCKET, S3_KEY, S3_SECRET = "dvc", "testing-key", "testing-secret"
DATA_TIMEOUT_MIN = 30
TARGET = "vae-adapt"  # the pods run it and what it depends on


@dataclass
class Cluster:
    origin: Path
    pods: Path
    remote_url: str
    endpoint: str
    parent_run_id: str = ""
    logs: dict[str, str] = field(default_factory=dict)  # stage -> what its pod's flow run logged
    outcome: dict[str, str] = field(default_factory=dict)  # stage -> what its pod's flow returned
    seconds: dict[str, float] = field(default_factory=dict)


class _Lines(logging.Handler):
    """The flow run's log lines (the DVC output that flows.dvc_stage streams to the run logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _git_clone(cluster: Cluster, name: str) -> Path:
    """A pod's checkout: a fresh clone, pointed at the shared remote. A cluster's pods find the remote
    in the committed .dvc/config (infra/dvc-remote.sh); here it stays in the clone's config.local,
    and the credentials come from the environment."""
    pod = cluster.pods / name
    subprocess.run(["git", "clone", "-q", str(cluster.origin), str(pod)], check=True)
    for args in (["remote", "add", "--local", "-d", "s3", cluster.remote_url],
                 ["remote", "modify", "--local", "s3", "endpointurl", cluster.endpoint]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=pod, check=True, capture_output=True)
    return pod


def _without_ablations(origin: Path) -> Path:
    """The copy with smoke's ablations dropped (null), committed: their arms train as the other stages do
    and their scoring reads what pixeval reads, so on the cluster they would add pods and nothing new."""
    import yaml

    from pixart import dag

    params = origin / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    # every name, the ones smoke already drops too: a mapping without them would inherit tiny's
    raw["profiles"]["smoke"]["ablations"] = dict.fromkeys(SMOKE.ablations)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    dag.write(params)
    assert not load_profile("smoke", params)[1].claims()
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "no ablations"],
                   cwd=origin, check=True)
    return origin


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """moto S3 as the DVC remote, a SQLite MLflow store and artifact folder outside every clone, a
    Prefect test server; the smoke profile's repo copy is what the pods clone."""
    from prefect.testing.utilities import prefect_test_harness

    from pixart import tracking
    from pixart.settings import get_settings

    tmp = tmp_path_factory.mktemp("cluster")
    (tmp / "origin").mkdir()
    port = free_port()
    moto = Server("moto", [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)], http_ready(f"http://{HOST}:{port}/"),
                  port=port, log_path=tmp / "moto.log")
    with pytest.MonkeyPatch.context() as env, moto:
        for key in [k for k in os.environ if k.startswith("PIXART_") or k in RENDEZVOUS]:
            env.delenv(key)
        env.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("PIXART_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        env.setenv("PIXART_ARTIFACT_LOCATION", (tmp / "mlartifacts").as_uri())
        boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        cluster = Cluster(_without_ablations(copy_repo(tmp / "origin", "smoke")), tmp / "pods",
                          f"s3://{BUCKET}/pixart-curriculum", moto.url)
        get_settings.cache_clear()
        tracking.configure()
        with (prefect_test_harness(server_startup_timeout=120),
              tracking.curriculum_run("smoke", {"profile": "smoke", "execution": "rehearsal"}) as parent):
            cluster.parent_run_id = parent
            yield cluster
        get_settings.cache_clear()
    assert not moto.alive(), f"moto_server PID {moto.pid} outlived SIGTERM"


def _run_pod(cluster: Cluster, stage: str, env: pytest.MonkeyPatch) -> None:
    """The stage in its own fresh clone, by the stage-gpu deployment's flow, with the GPU count and
    timeout the curriculum flow gives it (flows/curriculum.py)."""
    from flows.stage import curriculum_stage
    from pixart.dag import sharded_gpus
    from pixart.settings import get_settings

    pod = _git_clone(cluster, stage)
    env.setenv("PIXART_ROOT", str(pod))
    env.setenv("PIXART_MASTER_PORT", str(free_port()))  # the DeepSpeed launcher's, beside other tests' ranks
    get_settings.cache_clear()
    config = SMOKE.stages.get(stage)
    handler = _Lines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    start = time.perf_counter()
    try:
        cluster.outcome[stage] = curriculum_stage(
            stage=stage, profile="smoke", timeout_min=config.timeout_min if config else DATA_TIMEOUT_MIN,
            parent_run_id=cluster.parent_run_id,
            num_gpus=config.num_gpus if config else sharded_gpus(SMOKE).get(stage))
    finally:
        logger.removeHandler(handler)
        cluster.seconds[stage] = time.perf_counter() - start
        cluster.logs[stage] = "\n".join(handler.lines)


@pytest.fixture(scope="module")
def curriculum(cluster: Cluster) -> Cluster:
    """``TARGET`` and its upstream, in the curriculum flow's order, each stage in its own pod."""
    plan = make_plan(cluster.origin, "smoke", list(SMOKE.stages), [TARGET])
    assert {"prepare-data", "vaes", "features-base", "base", TARGET} <= set(plan.stages), plan.stages
    with pytest.MonkeyPatch.context() as env:
        for stage in plan.stages:
            _run_pod(cluster, stage, env)
    print("pod seconds: " + ", ".join(f"{s} {t:.0f}" for s, t in cluster.seconds.items()),
          f"(total {sum(cluster.seconds.values()):.0f} s)")
    return cluster


def test_every_stage_runs_in_exactly_one_pod_and_the_others_restore_it(curriculum):
    ran_in = Counter(name for log in curriculum.logs.values() for name, o in outcomes(log).items() if o == "ran")
    assert set(ran_in) == set(curriculum.logs) and set(ran_in.values()) == {1}, ran_in
    for stage, log in curriculum.logs.items():
        walked = outcomes(log)
        assert curriculum.outcome[stage] == walked.pop(stage) == "ran", log[-3000:]
        assert set(walked.values()) <= {"restored"}, (stage, walked)


def test_mlflow_holds_one_run_per_stage_under_the_curriculum_run(curriculum):
    import mlflow

    runs = mlflow.search_runs(experiment_names=["pixart-curriculum"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{curriculum.parent_run_id}'")
    per_stage = Counter(run.data.tags["stage"] for run in runs)
    trained = [name for name, s in SMOKE.stages.items() if s.kind != "import" and name in curriculum.logs]
    recaption = ["recaption"] if "recaption" in curriculum.logs else []
    assert per_stage == Counter([*trained, *(f"vae-{name}" for name in SMOKE.vaes), *recaption]), per_stage
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_a_last_fresh_clone_restores_what_the_pods_ran_and_runs_nothing(curriculum):
    pod = _git_clone(curriculum, "final")
    env = {**os.environ, "PIXART_ROOT": str(pod)}
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro", "--pull", TARGET], cwd=pod, env=env,
                           capture_output=True, text=True, check=False)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    walked = outcomes(repro.stdout)
    assert set(walked) == set(curriculum.logs) and set(walked.values()) == {"restored"}, walked
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--with-deps", TARGET], cwd=pod, env=env,
                            capture_output=True, text=True, check=True)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    assert (pod / f"outputs/{TARGET}/stage.json").is_file() and (pod / "outputs/base/stage.json").is_file()
