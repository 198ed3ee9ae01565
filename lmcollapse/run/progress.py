"""Progress bars that suit both a terminal and a log file.

On a terminal a bar refreshes ten times a second; when stderr is a file or a pipe (a batch job,
``nohup``, CI) every refresh would be appended as a new line, so it refreshes every 30 seconds.

    for batch in progress_bar(batches, desc="ppl blocks", unit="batch"):
        ...
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_SECONDS = 30.0


class _HiddenBar(tqdm):
    """A bar that is never drawn (``--no-progress``, ranks other than 0). tqdm starts a monitor
    thread when it creates a bar, even a disabled one; this class has none."""

    monitor_interval = 0


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    if not enabled:
        return _HiddenBar(iterable, disable=True, **kwargs)
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else LOG_INTERVAL_SECONDS)
    kwargs.setdefault("dynamic_ncols", interactive)
    return tqdm(iterable, **kwargs)
