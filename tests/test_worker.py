"""The stage fork server: a `python -m stages.X` process handed to it behaves like one run on its own."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixart.worker import ENV

REPO = Path(__file__).resolve().parent.parent

ECHO = """
import os, sys
from stages import helper
print("args", *sys.argv[1:], "ppid", os.getppid(), "helper", helper.VALUE, "greeting", os.environ.get("GREETING"))
print("to stderr", file=sys.stderr)
if "sleep" in sys.argv:
    import time; time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def project(tmp_path):
    """A project folder with a stage `stages.echo` and a module `stages.helper` the worker preloads."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text((REPO / "stages" / "__init__.py").read_text())
    (tmp_path / "stages" / "helper.py").write_text("VALUE = 'one'\n")
    (tmp_path / "stages" / "echo.py").write_text(ECHO)
    return tmp_path


def start_worker(project, path, preload=("stages.helper",), env=None):
    """A worker serving ``path`` from ``project`` with ``preload`` imported, once it accepts."""
    code = f"from pixart.worker import serve; serve({str(path)!r}, {tuple(preload)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=project, env=env)
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture
def worker(project):
    path = Path(f"/tmp/pixart-test-worker-{os.getpid()}.sock")
    proc = start_worker(project, path)
    yield proc, path
    proc.kill()
    proc.wait()
    path.unlink(missing_ok=True)


def stage(project, path, *args, env=None, **kwargs):
    env = {**os.environ, ENV: str(path), "GREETING": "hi", **(env or {})}
    return subprocess.run([sys.executable, "-m", "stages.echo", *args], cwd=project, env=env, capture_output=True,
                          text=True, check=False, **kwargs)


def test_a_stage_runs_in_a_fork_of_the_worker_with_its_args_env_streams_and_status(project, worker):
    proc, path = worker
    done = stage(project, path, "3", "x")
    assert done.returncode == 3
    assert f"args 3 x ppid {proc.pid} helper one greeting hi" in done.stdout
    assert "to stderr" in done.stderr and "running" not in done.stderr


def test_a_changed_preloaded_module_is_refused_and_the_worker_restarts_with_it(project, worker):
    proc, path = worker
    (project / "stages" / "helper.py").write_text("VALUE = 'two'\n")
    refused = stage(project, path, "0")
    assert "helper.py changed since it started; running stages.echo here" in refused.stderr
    assert "helper two" in refused.stdout and f"ppid {proc.pid}" not in refused.stdout
    deadline = time.monotonic() + 30
    while True:  # the worker re-executes itself (same pid) and serves again with the new module
        again = stage(project, path, "0")
        if f"ppid {proc.pid}" in again.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f"ppid {proc.pid} helper two" in again.stdout


def test_an_import_time_variable_or_another_folder_is_refused_and_runs_here(project, worker, tmp_path_factory):
    proc, path = worker
    done = stage(project, path, "0", env={"HF_HOME": "/elsewhere"})
    assert "the import-time environment differs" in done.stderr and f"ppid {proc.pid}" not in done.stdout
    other = tmp_path_factory.mktemp("other")
    (other / "stages").symlink_to(project / "stages")
    done = stage(other, path, "0")
    assert f"it serves {project}" in done.stderr and done.returncode == 0


def test_no_worker_answering_runs_the_stage_here(project, tmp_path):
    done = stage(project, tmp_path / "absent.sock", "0")
    assert done.returncode == 0 and "does not answer" in done.stderr and "helper one" in done.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_or_killed_stage_process_stops_the_fork(project, worker, sig):
    proc, path = worker
    client = subprocess.Popen([sys.executable, "-m", "stages.echo", "0", "sleep"], cwd=project,
                              env={**os.environ, ENV: str(path)}, stdout=subprocess.PIPE, text=True)
    line = client.stdout.readline()
    assert f"ppid {proc.pid}" in line
    client.send_signal(sig)
    assert client.wait(timeout=10) != 0
    deadline = time.monotonic() + 10
    while True:
        forks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False).stdout
        if not forks.split() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert forks.split() == []


THREADS = """
import os, sys, torch
from threadpoolctl import threadpool_info
blas = {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}
print("rank", os.environ["RANK"], "ppid", os.getppid(), "torch threads", torch.get_num_threads(), "blas threads", blas)
"""


def test_the_ranks_torchrun_starts_fork_from_the_worker_sized_as_fresh_processes(project, tmp_path):
    """torchrun gives each rank OMP_NUM_THREADS=1 (and an NCCL variable): the ranks still fork, with
    the thread count a fresh process would take from it, not the worker's."""
    (project / "stages" / "threads.py").write_text(THREADS)
    path = tmp_path / "w.sock"
    proc = start_worker(project, path, ("torch", "numpy", "stages.helper"), {**os.environ, "OMP_NUM_THREADS": "2"})
    try:
        torchrun = Path(sys.executable).parent / "torchrun"
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun sets 1 where unset
        done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "stages.threads"],
                              cwd=project, env={**env, ENV: str(path)}, capture_output=True, text=True, check=True)
        for rank in (0, 1):
            assert f"rank {rank} ppid {proc.pid} torch threads 1 blas threads {{1}}" in done.stdout, (
                done.stdout + done.stderr)
    finally:
        proc.kill()
        proc.wait()
