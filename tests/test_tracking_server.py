"""pixart.tracking through a real `mlflow server` on 127.0.0.1, and the tests' Server helper itself."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Server, free_port, http_ready, mlflow_server
from test_tracking import file_hashes, make_checkpoint

from pixart import tracking
from pixart.settings import Settings


@pytest.fixture(scope="session")
def mlflow_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    with server:
        yield server
    assert not server.alive(), f"mlflow server PID {server.pid} or one of its workers outlived SIGTERM"


def test_register_alias_and_download_through_an_mlflow_server(mlflow_http, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking.client, "_context", None)
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    settings = Settings(root=tmp_path / "client", tracking_uri=mlflow_http.url, artifact_location="")
    tracking.configure(settings)

    with tracking.curriculum_run("smoke", {"profile": "smoke"}):
        with tracking.stage_run("base", {"stage": {"steps": 1}}, data_version="d1") as base_run:
            v1 = tracking.register_checkpoint(
                base_run,
                make_checkpoint(tmp_path / "base", "base"),
                stage="base",
                weak_input_version=None,
                data_version="d1",
            )
        source = make_checkpoint(tmp_path / "align", "align")
        with tracking.stage_run("align", {"stage": {"steps": 1}}, data_version="d1") as align_run:
            align_run.log_metrics({"loss": 0.1}, step=1)
            v2 = tracking.register_checkpoint(
                align_run, source, stage="align", weak_input_version=v1, data_version="d1"
            )

    # The server proxies artifacts: the client never sees the server's folder.
    assert align_run.artifact_uri.startswith("mlflow-artifacts:")
    stored = list((mlflow_http.cwd / "artifacts").rglob("checkpoint/transformer/weights.bin"))
    assert len(stored) == 2

    assert [(v["stage"], v["version"]) for v in tracking.lineage("models:/pixart-sigma@align")] == [
        ("align", v2),
        ("base", v1),
    ]
    downloaded = tracking.resolve_weak_input("align", tmp_path / "outputs")
    assert downloaded.is_relative_to(tmp_path / "client")
    assert file_hashes(downloaded) == file_hashes(source)


def test_server_start_failure_raises_with_the_log_tail(tmp_path):
    port = free_port()
    server = Server(
        "broken",
        [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"],
        http_ready(f"http://127.0.0.1:{port}/"),
        port=port,
        log_path=tmp_path / "broken.log",
    )
    with pytest.raises(RuntimeError, match="(?s)exited with 3.*bad config"):
        server.start()


def test_server_stop_ends_the_main_pid_and_workers_that_ignore_it(tmp_path):
    port = free_port()
    # The main process serves HTTP and leaves a worker that outlives its parent's SIGTERM.
    script = (
        "import subprocess, sys, http.server\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler\n"
        f"ThreadingHTTPServer(('127.0.0.1', {port}), SimpleHTTPRequestHandler).serve_forever()\n"
    )
    server = Server(
        "http",
        [sys.executable, "-c", script],
        http_ready(f"http://127.0.0.1:{port}/"),
        port=port,
        cwd=tmp_path,
        log_path=tmp_path / "http.log",
        startup_timeout=20,
    )
    server.start()
    assert server.alive()
    server.stop(timeout=0.5)
    assert server.process.returncode == -15
    assert not server.alive()
    assert not Path(f"/proc/{server.pid}").exists()
