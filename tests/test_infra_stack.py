"""The scale-out stack on 127.0.0.1, as infra/compose.yaml wires it: Postgres (Debian's binaries) backs
an `mlflow server` with basic auth and S3 artifacts on moto, whose worker account infra/mlflow-users.py
makes; DVC pushes to and pulls from the same S3; a Prefect server wants its auth string."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow.exceptions import MlflowException
from servers import HOST, Server, free_port, http_ready
from test_tracking import file_hashes, make_checkpoint

from pixart import tracking
from pixart.settings import ROOT, Settings

BIN = Path(sys.executable).parent
ADMIN, ADMIN_PASSWORD = "admin", "pixart-admin-password"  # mlflow wants >= 12 characters
WORKER, WORKER_PASSWORD = "pixart-worker", "pixart-worker-password"
S3_KEY, S3_SECRET = "testing-key", "testing-secret"
POSTGRES_USER = "pixart"


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        reason = "Postgres is not installed: apt-get install postgresql (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found[-1].parent


def _as_postgres_user() -> list[str]:
    # postgres refuses to run as root; setpriv execs, so the PID we track is postgres itself.
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"]


def _pg_ready(pg_bin: Path, port: int) -> bool:
    return subprocess.run([pg_bin / "pg_isready", "-q", "-h", HOST, "-p", str(port)], check=False).returncode == 0


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    pg_bin = _postgres_bin()
    # Outside pytest's 0700 tmp root: the postgres user must reach its data directory.
    workdir = Path(tempfile.mkdtemp(prefix="pixart-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    run_as = _as_postgres_user()
    initdb = subprocess.run(
        [*run_as, pg_bin / "initdb", "-D", workdir / "data", "-U", POSTGRES_USER, "--auth=trust", "-E", "UTF8",
         "--no-sync"],
        capture_output=True, text=True, check=False,
    )
    assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
    port = free_port()
    server = Server(
        "postgres",
        [*run_as, pg_bin / "postgres", "-D", workdir / "data", "-h", HOST, "-p", str(port), "-k", workdir,
         "-c", "fsync=off"],
        lambda: _pg_ready(pg_bin, port),
        port=port,
        log_path=workdir / "postgres.log",
    )
    with server:
        for db in ("mlflow", "mlflow_auth"):
            subprocess.run([pg_bin / "createdb", "-h", HOST, "-p", str(port), "-U", POSTGRES_USER, db], check=True)
        yield server
    assert not server.alive(), f"postgres PID {server.pid} outlived SIGTERM"
    shutil.rmtree(workdir)


@pytest.fixture(scope="module")
def s3() -> Iterator[Server]:
    port = free_port()
    server = Server(
        "moto", [BIN / "moto_server", "-H", HOST, "-p", str(port)], http_ready(f"http://{HOST}:{port}/"), port=port
    )
    with server:
        client = _s3_client(server.url)
        for bucket in ("mlflow", "dvc"):
            client.create_bucket(Bucket=bucket)
        yield server
    assert not server.alive(), f"moto_server PID {server.pid} outlived SIGTERM"


def _s3_client(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )


def _pg_uri(postgres: Server, db: str) -> str:
    return f"postgresql+psycopg://{POSTGRES_USER}@{HOST}:{postgres.port}/{db}"


@pytest.fixture(scope="module")
def mlflow_server(postgres: Server, s3: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The compose file's mlflow service: Postgres backend, S3 artifacts proxied, basic auth on."""
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    auth_ini = workdir / "basic_auth.ini"
    auth_ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {_pg_uri(postgres, 'mlflow_auth')}\nadmin_username = {ADMIN}\n"
    )
    port = free_port()
    env = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # GenAI job consumers take ~25 s to stop and are unused here
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        "MLFLOW_S3_ENDPOINT_URL": s3.url,
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server = Server(
        "mlflow",
        [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
         "--backend-store-uri", _pg_uri(postgres, "mlflow"), "--artifacts-destination", "s3://mlflow/artifacts",
         "--workers", "1", "--app-name", "basic-auth"],
        http_ready(f"http://{HOST}:{port}/health"),
        port=port,
        env=env,
        cwd=workdir,
        log_path=workdir / "server.log",
        startup_timeout=120,
    )
    with server:
        yield server
    assert not server.alive(), f"mlflow server PID {server.pid} or a worker outlived SIGTERM"


def _get_status(url: str, user: str | None = None, password: str | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    if user is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mlflow_server_with_auth_refuses_anonymous_and_wrong_passwords(mlflow_server):
    url = f"{mlflow_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get_status(url) == 401
    assert _get_status(url, ADMIN, "not-the-password") == 401
    assert _get_status(url, ADMIN, ADMIN_PASSWORD) == 200


def test_stage_checkpoint_round_trips_through_postgres_and_s3(mlflow_server, postgres, s3, tmp_path, monkeypatch):
    import mlflow
    import psycopg

    monkeypatch.setattr(tracking.client, "_context", None)
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    monkeypatch.setenv("PIXART_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    # The server proxies S3: the client holds no S3 credentials at all.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    tracking.configure(Settings(root=tmp_path / "client"))

    source = make_checkpoint(tmp_path / "aes-1024", "aes-1024")
    with (
        tracking.curriculum_run("xl", {"profile": "xl"}),
        tracking.stage_run("aes-1024", {"stage": {"steps": 1}}, data_version="d1") as run,
    ):
        version = tracking.register_checkpoint(run, source, stage="aes-1024", weak_input_version=None, data_version="d1")

    downloaded = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/pixart-sigma@aes-1024", dst_path=str(tmp_path / "download")
    )
    assert file_hashes(Path(downloaded)) == file_hashes(source)

    # The bytes live in the S3 bucket, the registry rows in Postgres: nothing fell back to local files.
    keys = [o["Key"] for o in _s3_client(s3.url).list_objects_v2(Bucket="mlflow")["Contents"]]
    assert any(k.endswith(f"{run.run_id}/artifacts/checkpoint/transformer/weights.bin") for k in keys), keys
    with psycopg.connect(f"postgresql://{POSTGRES_USER}@{HOST}:{postgres.port}/mlflow") as conn:
        rows = conn.execute(
            "select name, version from model_versions where name = 'pixart-sigma'"
        ).fetchall()
        aliases = conn.execute("select alias, version from registered_model_aliases").fetchall()
    assert rows == [("pixart-sigma", int(version))]
    assert ("aes-1024", int(version)) in aliases
    assert not (tmp_path / "client" / "mlartifacts").exists()


def _mlflow_users(server: Server) -> subprocess.CompletedProcess[str]:
    """infra/mlflow-users.py as the compose job runs it: as admin, against the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIXART_", "AWS_"))} | {
        "MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": ADMIN,
        "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD, "PIXART_WORKER_USER": WORKER,
        "PIXART_WORKER_PASSWORD": WORKER_PASSWORD, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, ROOT / "infra/mlflow-users.py"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_worker_account_runs_and_registers_a_stage_but_administers_nothing(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    for attempt in ("first", "re-run"):
        made = _mlflow_users(mlflow_server)
        assert made.returncode == 0, f"{attempt}:\n{made.stderr[-3000:]}"
    monkeypatch.setattr(tracking.client, "_context", None)
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    # The worker's credentials inside the URI: they reach MLflow beside it, never in what it prints.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    uri = mlflow_server.url.replace("//", f"//{WORKER}:{WORKER_PASSWORD}@")
    settings = Settings(root=tmp_path / "worker", tracking_uri=uri)
    tracking.configure(settings)

    source = make_checkpoint(tmp_path / "kv-1024", "kv-1024")
    with (
        tracking.curriculum_run("xl", {"profile": "xl"}),
        tracking.stage_run("kv-1024", {"stage": {"steps": 1}}, data_version="d1") as run,
    ):
        run.log_metrics({"loss": 0.5}, step=1)
        version = tracking.register_checkpoint(run, source, stage="kv-1024", weak_input_version=None, data_version="d1")
    tracking.set_alias("champion", version)
    tracking.log_version_metrics("kv-1024", {"fid": 12.5})
    assert file_hashes(tracking.resolve_weak_input("kv-1024", tmp_path / "no-outputs")) == file_hashes(source)

    client, auth = MlflowClient(settings.resolved_tracking_uri), AuthServiceClient(settings.resolved_tracking_uri)
    for forbidden in (lambda: auth.create_user("intruder", "intruder-password"),
                      lambda: auth.update_user_admin(WORKER, True),
                      lambda: auth.grant_user_permission(WORKER, "registered_model", "pixart-sigma", "MANAGE"),
                      lambda: client.delete_registered_model("pixart-sigma"),
                      lambda: client.delete_experiment(tracking.client._ctx().experiment_id)):
        with pytest.raises(MlflowException, match="403"):
            forbidden()


def test_prefect_server_with_an_auth_string_refuses_clients_without_it(tmp_path):
    """The compose pair: PREFECT_SERVER_API_AUTH_STRING on the server, PREFECT_API_AUTH_STRING on the
    worker; /api/health stays open for the healthcheck."""
    auth = "pixart:prefect-auth-password"
    port = free_port()
    api = f"http://{HOST}:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api}
    server = Server("prefect-server", [str(BIN / "prefect"), "server", "start"], http_ready(f"{api}/health"), port=port,
                    env=env | {"PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_SERVER_API_HOST": HOST,
                               "PREFECT_SERVER_API_PORT": str(port)},
                    log_path=tmp_path / "server.log", startup_timeout=120)
    with server:
        user, _, password = auth.partition(":")
        assert _get_status(f"{api}/flows/filter", data=b"{}") == 401
        assert _get_status(f"{api}/flows/filter", user, "wrong", data=b"{}") == 401
        assert _get_status(f"{api}/flows/filter", user, password, data=b"{}") == 200
        pools = [str(BIN / "prefect"), "work-pool", "ls"]
        refused = subprocess.run(pools, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert refused.returncode != 0
        listed = subprocess.run(pools, env=env | {"PREFECT_API_AUTH_STRING": auth}, capture_output=True, text=True,
                                timeout=120, check=False)
        assert listed.returncode == 0, listed.stdout + listed.stderr
    assert not server.alive(), f"prefect server PID {server.pid} outlived SIGTERM"


def _dvc(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [BIN / "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_dvc_push_wipe_pull_through_the_s3_remote(s3, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"DVC_NO_ANALYTICS": "1"}
    _dvc(repo, "init", "--no-scm", env=env)
    # A stand-in for a stage's checkpoint folder, tracked and cached as dvc.yaml's outputs are.
    make_checkpoint(repo / "outputs/base", "base")
    _dvc(repo, "add", "outputs/base", env=env)
    produced = file_hashes(repo / "outputs/base")

    setup = subprocess.run(
        ["bash", ROOT / "infra/dvc-remote.sh"], cwd=repo, capture_output=True, text=True, check=False,
        env={**env, "DVC": str(BIN / "dvc"), "PIXART_DVC_REMOTE": "s3://dvc/pixart-curriculum",
             "PIXART_S3_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET},
    )
    assert setup.returncode == 0, setup.stderr
    committed = (repo / ".dvc/config").read_text()
    assert s3.url in committed and S3_SECRET not in committed and S3_KEY not in committed
    assert S3_SECRET in (repo / ".dvc/config.local").read_text()

    # From here no AWS_* variable is set: the credentials come from .dvc/config.local.
    _dvc(repo, "push", env=env)
    stored = _s3_client(s3.url).list_objects_v2(Bucket="dvc", Prefix="pixart-curriculum/")
    assert stored["KeyCount"] >= len(produced)

    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(repo / "outputs/base")  # outputs/base.dvc stays, as dvc.lock would
    _dvc(repo, "pull", env=env)
    assert file_hashes(repo / "outputs/base") == produced
