"""Real servers for integration tests: start one on 127.0.0.1 at a free port, wait until it is
ready, stop it by its PID.

A ``Server`` is a command, an environment and a readiness check (``http_ready`` for MLflow, Prefect
or moto; ``tcp_ready`` for Postgres). It runs in its own process group, so ``stop()`` can check that
the workers it spawned went with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_ready(url: str) -> Callable[[], bool]:
    """Ready when GET ``url`` answers 200."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return check


def tcp_ready(port: int) -> Callable[[], bool]:
    """Ready when 127.0.0.1:``port`` accepts a connection."""

    def check() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            return False

    return check


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


class Server:
    """A server process: ``start()`` waits until ``ready()``, ``stop()`` sends SIGTERM to its PID.

    Usable as a context manager. Output goes to ``log_path``; a failed start raises with its tail.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        ready: Callable[[], bool],
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.ready = ready
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name}: not started")
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self) -> Self:
        """Start the command and wait until it is ready; raise with the log's tail if it is not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready():
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"{self.name} not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.25)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the main PID, SIGKILL it after ``timeout``; then make sure no worker of its
        group outlives it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
        if not self._group_ended(timeout):
            # Workers of the group we started are ours to end; the group id is the main PID.
            os.killpg(self.pid, signal.SIGKILL)
            self._group_ended(5.0)

    def _group_ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while group_members(self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def alive(self) -> bool:
        """Whether the main process or any process of its group still runs."""
        return self.process is not None and bool(group_members(self.pid))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mlflow_server(workdir: Path) -> Server:
    """``mlflow server`` on a free port with a SQLite backend and proxied artifacts under ``workdir``
    (healthy in 10-12 s on 2 idle cores, 25 s under load)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--workers",
        "1",
    ]
    # Job execution (GenAI scorers) starts seven huey consumers that take ~25 s to stop; unused here.
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return Server(
        "mlflow",
        command,
        http_ready(f"http://{HOST}:{port}/health"),
        port=port,
        env=env,
        cwd=workdir,
        log_path=workdir / "server.log",
        startup_timeout=120,
    )
