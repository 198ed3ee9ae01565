"""A fork server for the tests' command lines: ``python -m lmcollapse ...`` without importing
torch and transformers again for every command.

Most of the suite's time was commands run as users run them, one process each: 180 of them, and
about 5 s of each one's 8 s of CPU went to importing torch, transformers, accelerate, datasets and
MAUVE's scikit-learn before a line of lmcollapse ran. This server imports those libraries once
(``PRELOAD``, never lmcollapse itself) and forks a child for each command. The child is a new
process like any other: its own pid, session and exit status, the command's environment, working
folder, arguments and stdin/stdout/stderr; it imports lmcollapse afresh and runs it as ``python -m
lmcollapse`` does (``runpy``, ``__main__``), so signals, failpoints, SIGKILL of its process group,
locks and atexit handlers behave as in a process started from nothing.

What a fork cannot give, and how the helpers keep to what it can:
- The preloaded libraries read some environment variables once, at import (thread counts, the
  hub's settings). A command is forked only when its environment equals the server's but for
  ``RUNTIME_VARIABLES``, which are read only as a command runs; any other difference
  (a test that sets ``OMP_NUM_THREADS``) runs the command in a process of its own.
- Children share the server's hash seed, where fresh processes each draw one.
- Commands that must prove they load no model library (``run_cli_light``), the runs a study's
  coordinator starts, SLURM's jobs and ``accelerate launch`` are real processes in any case.

``LMCOLLAPSE_TEST_FORKSERVER=0`` runs every command in a process of its own (``make test``
took 14 min 11 s that way against 11 min 25 s, measured once each): the suite passes either way.

Protocol, one Unix-socket connection per command: the client sends a JSON line (args, cwd, env,
stdout and stderr paths), the server answers ``{"pid": ...}`` once the child is forked and
``{"status": ...}`` (``os.waitpid``'s) once it has exited.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# What a micro `generation` imports from outside lmcollapse, by its entry points (the rest comes
# along): python -X importtime -m lmcollapse generation ... lists them.
PRELOAD = (
    "torch", "transformers", "transformers.models.opt.modeling_opt", "transformers.generation",
    "accelerate", "datasets", "pyarrow.parquet", "pandas", "safetensors.torch", "tokenizers",
    "mauve", "sklearn.decomposition", "sklearn.metrics", "faiss", "scipy.stats", "yaml", "tqdm",
)

# Read by lmcollapse when a command runs (never at import, never by a library); they may differ
# between the server and a command it forks. PYTEST_CURRENT_TEST changes with every test.
RUNTIME_VARIABLES = frozenset({
    "LMCOLLAPSE_FAILPOINT", "LMCOLLAPSE_CACHE_DIR", "LMCOLLAPSE_DATA_DIR", "LMCOLLAPSE_MALLOC",
    "ACCEPT_CHANGED", "PYTEST_CURRENT_TEST",
    "TORCHINDUCTOR_CACHE_DIR",  # read by torch's compiler when it compiles; set in the tests' process once it has
    "SLURM_CONF",  # read by SLURM's commands, which lmcollapse runs; tests/test_slurm.py sets it for its cluster
    "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR",  # set by torch's compiler right before its compiled code reads it
})

# What lmcollapse's command line sets, if unset, at the start of every command (cli.quiet_libraries,
# engine/allocator.keep_freed_memory), before any library loads: the server sets them before it
# preloads, as a fresh command would (tests/test_forkserver.py checks the list against main()).
COMMAND_DEFAULTS = {
    "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}

_REAP_SECONDS = 0.02  # how often the server looks for exited children


def differences(started: dict[str, str], preloaded: dict[str, str], command: dict[str, str]) -> list[str]:
    """The variables that keep a command with this environment from being forked from a server
    started with the first one, whose environment was the second once its libraries were imported."""
    return sorted(
        key for key in (preloaded.keys() | command.keys()) - RUNTIME_VARIABLES
        # A variable a library sets at import (scikit-learn's KMP_INIT_AT_FORK), or the command line
        # as it starts (COMMAND_DEFAULTS), would be set in a fresh process too, unless the command sets it
        if command.get(key) != preloaded.get(key) and not (key not in started and command.get(key) is None))


def _send(connection: socket.socket, message: dict) -> None:
    try:
        connection.sendall((json.dumps(message) + "\n").encode())
    except OSError:  # the client gave up (a timeout): the child is reaped all the same
        pass


def serve(address: str) -> dict:
    """Accept commands until the parent goes; returns (in a forked child only) the child's command."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(8)
    parent = os.getppid()
    print(json.dumps(dict(os.environ)), flush=True)  # ready: the environment the libraries left
    waiting: dict[int, socket.socket] = {}
    while os.getppid() == parent:  # the tests' worker exited: so does the server
        if select.select([listener], [], [], _REAP_SECONDS)[0]:
            connection, _ = listener.accept()
            with connection.makefile("rb") as lines:
                command = json.loads(lines.readline())
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in (connection, *waiting.values()):
                    other.close()
                return command
            _send(connection, {"pid": pid})
            waiting[pid] = connection
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            _send(waiting[pid], {"status": status})
            waiting.pop(pid).close()
    for pid in waiting:
        with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
            os.killpg(pid, signal.SIGKILL)
    raise SystemExit(0)


def become(command: dict) -> None:
    """In the child: the process ``python -m lmcollapse *args`` would be."""
    os.setsid()  # as subprocess's start_new_session: a failpoint may SIGKILL the whole group
    os.chdir(command["cwd"])
    os.environ.clear()
    os.environ.update(command["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, command["stdout"], os.O_WRONLY),
                            (2, command["stderr"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [sys.argv[0], *command["args"]]
    sys.path[0] = command["cwd"]  # python -m puts the working folder first


class ForkServer:
    """The client, one server per test process, started on first use (about 5 s)."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.folder = Path(tempfile.mkdtemp(prefix="lmcollapse-forkserver-"))
        self.address = str(self.folder / "socket")
        self.started = dict(env)
        self.server = subprocess.Popen([sys.executable, __file__, self.address], cwd=cwd, env=self.started,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
        atexit.register(self.close)
        ready = self.server.stdout.readline()
        if not ready:
            raise RuntimeError(f"the tests' fork server did not start (exit status {self.server.wait()}); "
                               "its error is above, or run the tests with LMCOLLAPSE_TEST_FORKSERVER=0")
        self.preloaded = json.loads(ready)
        self.reported_exit = False

    def close(self) -> None:
        self.server.kill()
        self.server.wait()

    def differences(self, env: dict[str, str]) -> list[str]:
        return differences(self.started, self.preloaded, env)

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess | None:
        """``subprocess.run([python, -m, lmcollapse, *args], capture_output=True, text=True, ...)``
        in a forked child, or None where the environment rules it out (see ``differences``)."""
        if self.server.poll() is not None:
            if not self.reported_exit:  # once: every command from here on is slower, and the suite should say why
                self.reported_exit = True
                warnings.warn(f"the tests' fork server exited (status {self.server.returncode}): every command from "
                              "here on runs in a process of its own, as with LMCOLLAPSE_TEST_FORKSERVER=0", stacklevel=3)
            return None
        if self.differences(env):
            return None
        argv = [sys.executable, "-m", "lmcollapse", *args]
        scratch = Path(tempfile.mkdtemp(dir=self.folder))
        try:
            output, errors = scratch / "stdout", scratch / "stderr"
            output.touch()
            errors.touch()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(self.address)
                connection.sendall((json.dumps({"args": list(args), "cwd": str(cwd), "env": env, "stdout": str(output),
                                                "stderr": str(errors)}) + "\n").encode())
                replies = _Replies(connection)
                pid = replies.next(time.monotonic() + 60)["pid"]
                reply = replies.next(time.monotonic() + timeout)
                if reply is None:  # as subprocess.run on a timeout: kill it, wait for it, raise
                    os.killpg(pid, signal.SIGKILL)
                    replies.next(None)
                    raise subprocess.TimeoutExpired(argv, timeout, output.read_text(), errors.read_text())
            # read_text translates newlines as subprocess's text mode does
            return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(reply["status"]), output.read_text(),
                                               errors.read_text())
        finally:
            for path in scratch.iterdir():
                path.unlink()
            scratch.rmdir()


class _Replies:
    """The server's JSON lines on a connection, each waited for until a deadline (None: forever)."""

    def __init__(self, connection: socket.socket):
        self.connection, self.buffer = connection, b""

    def next(self, deadline: float | None) -> dict | None:
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.connection], [], [], left)[0]:
                return None
            chunk = self.connection.recv(65536)
            if not chunk:
                raise RuntimeError("the tests' fork server closed the connection (it died?)")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


if __name__ == "__main__":
    import importlib
    import runpy
    import threading

    for name, value in COMMAND_DEFAULTS.items():
        os.environ.setdefault(name, value)
    for name in PRELOAD:
        importlib.import_module(name)
    # A thread alive at a fork would leave its locks held in every child.
    assert threading.active_count() == 1, f"preloading started threads: {threading.enumerate()}"
    assert not [name for name in sys.modules if name.startswith("lmcollapse")], "each command imports lmcollapse afresh"
    sys.stdout.flush()
    child = serve(sys.argv[1])
    become(child)
    runpy.run_module("lmcollapse", run_name="__main__", alter_sys=True)
