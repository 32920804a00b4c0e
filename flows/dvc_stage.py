"""Run one DVC stage as a subprocess: ``dvc repro --single-item <stage>``, with a hard timeout.

Why ``dvc repro`` rather than calling the stage functions in-process or re-hashing inputs here:
dvc.yaml is the one definition of each stage (its command, deps, params, outs); running the same
command through DVC means the flow and ``dvc repro`` can never disagree on what a stage does, and
DVC's own rule (hashes of deps and params against dvc.lock) decides "unchanged -> skipped". DVC
also records dvc.lock and caches the outs, so a Prefect run leaves the workspace exactly as
``dvc repro`` would. ``--single-item`` because Prefect, not DVC, walks the graph: one task per
stage, each with its own retries, timeout and state in the UI.

The timeout lives here, not in Prefect's ``timeout_seconds``: Prefect can only abandon the Python
call, while the stage is a process tree (dvc -> python -m pixart train -> launcher ranks). The
tree runs in its own session; on timeout it gets SIGINT (the trainer ends its MLflow run as KILLED
and DVC releases its lock), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

Outcome = Literal["ran", "skipped"]
GRACE_S = 30.0


class StageTimeout(TimeoutError):
    """A stage ran past its timeout and was stopped."""


class StageFailed(RuntimeError):
    """``dvc repro`` of a stage exited with an error; the message holds the output's tail."""


def dvc_command(*args: str) -> list[str]:
    """DVC from the interpreter running the flow (the project's venv)."""
    return [sys.executable, "-m", "dvc", *args]


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGINT the stage's process group, SIGKILL it if it is still there after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_logged(cmd: list[str], root: Path, timeout_s: float | None, log: Callable[[str], None],
               env: Mapping[str, str] | None = None, grace_s: float = GRACE_S) -> str:
    """Run ``cmd`` in ``root`` (environment ``env``, default this process's) in its own session,
    stream each output line to ``log``, stop the whole group after ``timeout_s`` (None: never); return
    the output, raise on a non-zero exit."""
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    fired = threading.Event()

    def on_timeout() -> None:
        fired.set()
        _stop_group(proc, grace_s)

    timer = threading.Timer(timeout_s, on_timeout) if timeout_s is not None else None
    if timer is not None:
        timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            log(line.rstrip())
        code = proc.wait()
    except BaseException:
        _stop_group(proc, grace_s)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    output = "".join(lines)
    if fired.is_set():
        raise StageTimeout(f"{' '.join(cmd[2:])}: stopped after its timeout of {timeout_s:.0f} s")
    if code != 0:
        raise StageFailed(f"{' '.join(cmd[2:])} exited with {code}:\n{output[-4000:]}")
    return output


def repro(root: Path, stage: str, *, timeout_s: float | None, pull: bool = False,
          log: Callable[[str], None] = print, env: Mapping[str, str] | None = None) -> Outcome:
    """``dvc repro --single-item stage`` in ``root``; "skipped" when DVC found it unchanged.

    ``pull`` fetches missing deps from the DVC remote first (a fresh machine)."""
    output = run_logged(dvc_command("repro", "--single-item", *(["--pull"] if pull else []), stage),
                        root, timeout_s, log, env)
    if f"Stage '{stage}' didn't change, skipping" in output:
        return "skipped"
    if f"Running stage '{stage}'" in output:
        return "ran"
    raise StageFailed(f"dvc repro {stage}: neither ran nor skipped it:\n{output[-2000:]}")


def default_remote(root: Path) -> str | None:
    """The DVC remote outputs are pushed to, or None when the repo has none."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["core"].get("remote")


def push(root: Path, stage: str, *, timeout_s: float | None, log: Callable[[str], None] = print) -> None:
    """``dvc push`` the stage's outs, so the next stage's machine can pull them."""
    if default_remote(root) is None:
        raise RuntimeError(
            f"{root}: no default DVC remote; a stage run on another machine must push its outputs "
            "(dvc remote add -d NAME URL)"
        )
    run_logged(dvc_command("push", stage), root, timeout_s, log)
