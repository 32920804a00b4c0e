"""Run one DVC stage as a subprocess, with a hard timeout: on this machine, or in a fresh clone (a pod).

Why ``dvc repro`` rather than calling the stage functions in-process or re-hashing inputs here:
dvc.yaml is the one definition of each stage (its command, deps, params, outs); running the same
command through DVC means the flow and ``dvc repro`` can never disagree on what a stage does, and
DVC's own rule (hashes of deps and params) decides what is unchanged. DVC also records dvc.lock and
caches the outs, so a Prefect run leaves the workspace exactly as ``dvc repro`` would.

Two recipes, one per kind of machine:

- Here (a checkout whose dvc.lock knows the upstream stages): ``dvc repro --single-item <stage>``,
  because Prefect, not DVC, walks the graph: one task per stage, each with its own retries, timeout
  and state in the UI. An unchanged stage is *skipped*.
- A pod (a fresh clone: no dvc.lock, no outputs; dvc.lock is never committed back): ``dvc repro
  --pull <stage>``, then ``dvc push --run-cache``. The remote's run cache (one entry per stage run,
  keyed by the hashes of its command, deps and params, naming its outs) is what tells the pod that
  an earlier pod produced a stage: ``--pull`` fetches the entries, then DVC walks the stage's
  upstream, and each stage whose key has an entry is *restored* (its outs pulled and checked out)
  instead of run; a stage's key needs its deps' contents, so the walk must start at the roots
  (``--single-item`` would re-run the stage). The stage itself then *runs*, or is restored when an
  earlier pod ran it already, and the push sends its outs and its entry for the next pods. Measured
  with DVC 3.67: ``dvc pull --run-cache`` in a fresh clone fails, and ``dvc fetch --run-cache``
  followed by a plain ``dvc repro`` re-runs everything. The cost: a pod checks out every upstream
  stage's outs. A stage DVC cannot run-cache (a ``persist`` or ``cache: false`` out) would run again
  in every pod that walks it; pixart/dag.py renders none.

The timeout lives here, not in Prefect's ``timeout_seconds``: Prefect can only abandon the Python
call, while the stage is a process tree (dvc -> pixart launch -> launcher ranks). The
tree runs in its own session; on timeout it gets SIGINT (the trainer ends its MLflow run as KILLED
and DVC releases its lock), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

Outcome = Literal["ran", "restored", "skipped"]
GRACE_S = 30.0
# DVC's message per outcome of a stage it walks, weakest first: a later one wins ("Pulling data": a
# dvc.lock entry whose outs were missing)
_MESSAGES: tuple[tuple[re.Pattern[str], Outcome], ...] = (
    (re.compile(r"^Stage '([^']+)' didn't change, skipping$", re.MULTILINE), "skipped"),
    (re.compile(r"^Stage '([^']+)' is cached - skipping run, checking out outputs$", re.MULTILINE), "restored"),
    (re.compile(r"^Pulling data for stage: '([^']+)'$", re.MULTILINE), "restored"),
    (re.compile(r"^Running stage '([^']+)':$", re.MULTILINE), "ran"),
)


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


def outcomes(output: str) -> dict[str, Outcome]:
    """What ``dvc repro`` did to each stage it walked, read from its output (the messages of
    dvc/stage/run.py, dvc/stage/cache.py and dvc/stage/__init__.py): a stage that was pulled or
    restored and then ran anyway (its outs were not all on the remote) ran."""
    return {name: outcome for pattern, outcome in _MESSAGES for name in pattern.findall(output)}


def repro(root: Path, stage: str, *, timeout_s: float | None, pull: bool = False,
          log: Callable[[str], None] = print, env: Mapping[str, str] | None = None) -> Outcome:
    """The stage in ``root``: ``dvc repro --single-item stage``, or with ``pull`` the pod's ``dvc repro
    --pull stage`` (upstream walked and restored from the remote's run cache). Returns what happened
    to the stage; logs which upstream stages ran here, which in a pod means their entries were lost."""
    args = ["--pull", stage] if pull else ["--single-item", stage]
    output = run_logged(dvc_command("repro", *args), root, timeout_s, log, env)
    walked = outcomes(output)
    if stage not in walked:
        raise StageFailed(f"dvc repro {stage}: neither ran, restored nor skipped it:\n{output[-2000:]}")
    upstream_ran = [name for name, outcome in walked.items() if outcome == "ran" and name != stage]
    if upstream_ran:
        log(f"{stage}: upstream stages ran here too, no run-cache entry restored them: {', '.join(upstream_ran)}")
    return walked[stage]


def default_remote(root: Path) -> str | None:
    """The DVC remote outputs are pushed to, or None when the repo has none."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["core"].get("remote")


def require_remote(root: Path) -> None:
    """Fail before a pod's stage runs, not after, when there is nowhere to push what it makes."""
    if default_remote(root) is None:
        raise RuntimeError(
            f"{root}: no default DVC remote; a stage run in a pod must push its outputs and run-cache entry "
            "(infra/dvc-remote.sh)"
        )


def push(root: Path, *, timeout_s: float | None, log: Callable[[str], None] = print) -> None:
    """``dvc push --run-cache``: the outs of every stage this workspace holds (the ones restored are on
    the remote already) and the run-cache entries, so that later pods restore instead of re-running."""
    run_logged(dvc_command("push", "--run-cache"), root, timeout_s, log)
