"""A fork server for the stage processes: the heavy imports paid once per `dvc repro`, not per stage.

DVC starts every stage as a new ``python -m stages.<kind>`` process, and each one spent 7-13 s
importing torch, diffusers, transformers, mlflow and DeepSpeed before its first step: most of the
smoke curriculum's wall time. ``python -m pixart.worker SOCKET`` imports them once and listens on a
Unix socket. A stage process started with ``PIXART_WORKER=SOCKET`` hands its arguments, working
directory, environment and standard streams to the worker, which forks a copy of itself to run the
stage; the stage process waits and exits with the copy's status, forwarding SIGINT and SIGTERM, and
the copy stops if the stage process dies (SIGKILL included).
Without the variable, or with no worker answering, a stage runs in its own process as before.

The worker refuses (and the stage runs in its own process) when the request could see other code or
settings than a fresh process would: another project folder, a module file changed since the
imports (then the worker also restarts itself), or a different value of a variable that libraries
read at import time (but for those a launcher sets per rank, ``PER_RANK``). Forking is safe
because the worker only imports: no torch op has run, so no OpenMP pool or other thread is lost in
the copy.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "PIXART_WORKER"
# what the stage entry points import; their own modules come along
PRELOAD = ("torch", "diffusers", "transformers", "mlflow", "deepspeed", "pixart.config", "pixart.tracking",
           "pixart.train.trainer", "pixart.train.vae", "pixart.train.dmd", "pixart.eval.pixeval", "pixart.data.features")
# variables that libraries read once, at import: a request must agree with the worker on them
IMPORT_TIME_PREFIXES = ("HF_", "TRANSFORMERS_", "DS_", "TORCH_", "CUDA_", "OMP_", "MKL_", "PYTHON")
# Set for every rank by torchrun (both) and the deepspeed launcher (the first): a copy may differ from
# the worker in them, so that the ranks of a multi-process stage fork instead of importing for 10+ s
# each. Of what was imported only the thread pools depend on the first, and no op has sized them yet:
# a copy sizes them itself (``_size_threads``). NCCL reads the second when a process group is made.
THREADS, PER_RANK = "OMP_NUM_THREADS", ("OMP_NUM_THREADS", "TORCH_NCCL_ASYNC_ERROR_HANDLING")
_HEADER = struct.Struct("!I")
_STREAMS = 3  # stdin, stdout, stderr


def stage_module(package: str) -> str | None:
    """The module of ``package`` this process was started to run (``python -m PACKAGE.X``), else None."""
    argv = sys.orig_argv
    if "-m" not in argv[:-1]:
        return None
    module = argv[argv.index("-m") + 1]
    return module if module.startswith(f"{package}.") else None


def delegate(package: str) -> None:
    """Run this ``python -m PACKAGE.X`` process's stage in the worker named by $PIXART_WORKER and exit
    with its status. Returns, and the stage runs here, when no worker is named or none accepts. The
    stage package calls it on import (``stages/__init__.py``), so that ``pixart`` never names it."""
    path, module = os.environ.get(ENV), stage_module(package)
    if not path or module is None:
        return
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
    except OSError as error:
        print(f"pixart worker: {path} does not answer ({error}); running {module} here", file=sys.stderr)
        return
    request = json.dumps({"module": module, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)})
    payload = request.encode()
    socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
    conn.sendall(payload)
    replies = conn.makefile("r")
    first = json.loads(replies.readline() or "{}")
    if "refused" in first:
        print(f"pixart worker: {first['refused']}; running {module} here", file=sys.stderr)
        return
    if "pid" not in first:
        sys.exit(f"pixart worker: {path} closed the connection before starting {module}")
    pid = first["pid"]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: os.kill(pid, number))
    last = json.loads(replies.readline() or "{}")
    if "exit" not in last:
        sys.exit(f"pixart worker: the process running {module} (pid {pid}) died without an exit status")
    sys.exit(last["exit"])


def _import_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


def _threads(env: dict[str, str]) -> int | None:
    """The thread count a request sets for its copy to apply, or None (then it must match the worker's)."""
    value = env.get(THREADS, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _same_import_env(request: dict[str, str], worker: dict[str, str]) -> bool:
    theirs, ours = _import_env(request), _import_env(worker)
    for name in PER_RANK:
        if name in theirs and (name != THREADS or _threads(request) is not None):
            theirs.pop(name)
            ours.pop(name, None)
    return theirs == ours


def _size_threads(count: int) -> None:
    """Size torch's and the BLAS libraries' thread pools as ``count`` in a fresh process would."""
    from threadpoolctl import threadpool_limits

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    threadpool_limits(count, user_api="blas")


def _module_files() -> dict[str, int]:
    files = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file:
            try:
                files[file] = os.stat(file).st_mtime_ns
            except OSError:
                continue
    return files


def _changed(files: dict[str, int]) -> str | None:
    for file, mtime in files.items():
        try:
            if os.stat(file).st_mtime_ns != mtime:
                return file
        except OSError:
            return file
    return None


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, _STREAMS)
    if len(header) != _HEADER.size or len(fds) != _STREAMS:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("malformed request")
    (size,) = _HEADER.unpack(header)
    payload = b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise ConnectionError("request cut short")
        payload += chunk
    return json.loads(payload), fds


def _reply(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _die_with_client(conn: socket.socket) -> None:
    """Stop the stage when the process that asked for it is gone (killed by a flow's timeout, say):
    that process sends nothing after its request, so the socket reads empty only when it closes."""
    try:
        conn.recv(1)
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _run_stage(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked copy: become the stage process the request describes, run it, report, exit."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if (count := _threads(request["env"])) is not None:
            _size_threads(count)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _reply(conn, {"pid": os.getpid()})
        threading.Thread(target=_die_with_client, args=(conn,), daemon=True).start()
        sys.argv = [request["module"], *request["argv"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - a stage's crash is reported like an uncaught exception
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            _reply(conn, {"exit": code})
        except OSError:
            pass
        os._exit(code)


def serve(path: Path, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import ``preload``, then fork one copy per request on the Unix socket ``path``, forever."""
    from pixart.settings import apply_stage_env

    apply_stage_env()
    start = time.perf_counter()
    for name in preload:
        importlib.import_module(name)
    if threading.active_count() > 1:
        raise RuntimeError(f"pixart worker: importing {preload} started threads; forking would lose them")
    files, root, env = _module_files(), os.getcwd(), dict(os.environ)
    path, bound = Path(path), Path(f"{path}.bind")
    bound.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(bound))
    listener.listen(16)
    bound.replace(path)  # the socket appears only once it accepts
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the copies
    print(f"pixart worker: {len(files)} modules imported in {time.perf_counter() - start:.1f} s; "
          f"serving {path} (pid {os.getpid()})", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                request, fds = _receive(conn)
            except (ConnectionError, OSError, ValueError) as error:
                print(f"pixart worker: dropped a request ({error})", file=sys.stderr, flush=True)
                continue
            apply_stage_env(request["env"])
            changed = _changed(files)
            refusal = (
                f"it serves {root}, not {request['cwd']}" if request["cwd"] != root
                else f"{changed} changed since it started" if changed
                else "the import-time environment differs" if not _same_import_env(request["env"], env)
                else None
            )  # fmt: skip
            if refusal:
                for fd in fds:
                    os.close(fd)
                _reply(conn, {"refused": refusal})
                if changed:
                    listener.close()
                    # the same pid, fresh imports: whoever stops the worker by pid still can
                    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
                continue
            if os.fork() == 0:
                listener.close()
                _run_stage(conn, request, fds)
            for fd in fds:
                os.close(fd)


@contextmanager
def started(timeout: float = 120.0) -> Iterator[dict[str, str]]:
    """A worker (this project, this folder) for the block's duration; yields the environment that
    sends stage processes to it. The worker is stopped by its pid at the end."""
    folder = Path(tempfile.mkdtemp(prefix="pixart-worker-"))  # short: socket paths are limited to ~100 bytes
    path = folder / "socket"
    proc = subprocess.Popen([sys.executable, "-m", "pixart.worker", str(path)])
    try:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"pixart worker exited with status {proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise TimeoutError(f"pixart worker did not serve {path} within {timeout:.0f} s")
            time.sleep(0.1)
        yield {**os.environ, ENV: str(path)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pixart.worker SOCKET")
    serve(Path(sys.argv[1]))
