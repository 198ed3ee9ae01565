"""Failpoints: named instants where a test can make the process die, fail or pause, exactly.

Crash consistency is only tested if the crash lands where it hurts: inside a checkpoint write,
between a shard and its sidecar. Timers cannot hit a window of a millisecond; a failpoint can.
Every call is a no-op unless ``LMCOLLAPSE_FAILPOINT`` names it (the etcd/TiKV technique):

    LMCOLLAPSE_FAILPOINT="<name glob>[@<hit>][=<action>]"

    name     a failpoint name, or an fnmatch glob of names (``write:shard-*.parquet``)
    hit      act on the n-th matching call in this process (default 1)
    action   kill (SIGKILL this process, the default), killpg (SIGKILL this process's whole process
             group: start it in a session of its own), sigterm / sigint (deliver the signal to
             this process), enospc (raise "No space left on device"), sleep:<seconds>

The points: ``write:<file name>`` (an atomic write, after the data is on disk, before it is
renamed into place), ``checkpoint-write`` (checkpoint files written, folder not yet renamed),
``train-step`` (after each optimizer step), ``generate-batch`` (after each generate call),
``eval-batch`` (after each evaluation batch).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import time
from collections import Counter

ENV = "LMCOLLAPSE_FAILPOINT"
_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    pattern, hit, action = _parse(spec)
    if not fnmatch.fnmatchcase(name, pattern):
        return
    _hits[pattern] += 1
    if _hits[pattern] != hit:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "killpg":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif action in ("sigterm", "sigint"):
        os.kill(os.getpid(), signal.SIGTERM if action == "sigterm" else signal.SIGINT)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device", name.split(":", 1)[-1])
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} (kill, killpg, sigterm, sigint, enospc, sleep:<s>)")


def _parse(spec: str) -> tuple[str, int, str]:
    target, _, action = spec.partition("=")
    pattern, _, hit = target.partition("@")
    return pattern, int(hit or 1), action or "kill"
