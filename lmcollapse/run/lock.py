"""One writer per run: an ``flock`` on ``<run>/.lock``, released by the kernel when its holder dies.

    with run_lock(run):        # fails at once, naming the holder, if another live process writes the run
        ...
    lock_holder(run)           # who holds it now, or None
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from lmcollapse.errors import LmcollapseError
from lmcollapse.run.layout import RunDir


@contextlib.contextmanager
def run_lock(run: RunDir, enabled: bool = True) -> Iterator[None]:
    """Hold the run's lock for the duration, or fail at once if another live process holds it.

    ``flock`` is released by the kernel when its holder dies, so a lock left by a killed
    process never blocks: the file may still name it, but nobody holds it.
    """
    if not enabled:
        yield
        return
    with file_lock(run.lock_file, lambda holder: f"run {run.root} is being written by another process ({holder}): "
                   "wait for it to finish or stop it; two writers would corrupt the run"):
        yield


@contextlib.contextmanager
def file_lock(lock_file: Path, refusal) -> Iterator[None]:
    """``run_lock`` on any lock file: an ``LmcollapseError(refusal(holder))`` at once where another
    live process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LmcollapseError(refusal(_read_holder(lock_file))) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)


def _read_holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
    except (OSError, ValueError):
        return "unknown process"


def lock_holder(run: RunDir) -> str | None:
    """Who holds the run's lock now, or None if nobody does (a stale file is not a holder)."""
    if not run.lock_file.exists():
        return None
    fd = os.open(run.lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _read_holder(run.lock_file)
    finally:
        os.close(fd)
