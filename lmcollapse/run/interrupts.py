"""Clean stops on SIGINT, SIGTERM and SLURM's time-limit warning (SIGUSR2).

Long loops call :func:`check_stop` at safe points (between optimizer steps, between shards);
the first signal only sets a flag, so a stage finishes the step in hand, saves what it must and
raises :class:`InterruptedStage`. A second signal stops at once (the default behaviour).

    with stop_on_signals():
        for step in ...:
            check_stop(save=lambda: save_checkpoint(step))
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from lmcollapse.errors import InterruptedStage

_requested: list[str] = []
# SLURM's warning before a job's time limit (sbatch --signal=USR2@120, as submitit asks): a stop
# request like SIGTERM, so a job stops at a safe point and is requeued; repeats of it are one event.
TIME_LIMIT = signal.SIGUSR2


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, TIME_LIMIT)}

    def request(signum, _frame):
        if signum == TIME_LIMIT and signal.Signals(signum).name in _requested:
            return  # one time limit, signalled to every process of a job step (and passed on by submitit)
        if _requested:  # a second signal: give up waiting for a safe point
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        _requested.append(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, request)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()


def stop_requested() -> bool:
    return bool(_requested)


def check_stop(where: str, save: Callable[[], None] | None = None, accelerator=None) -> None:
    """Raise InterruptedStage if a stop was requested (on any process), after ``save()``."""
    requested = stop_requested()
    if accelerator is not None and accelerator.num_processes > 1:
        import torch

        flag = torch.tensor([1.0 if requested else 0.0], device=accelerator.device)
        requested = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
    if requested:
        if save is not None:
            save()
        name = _requested[0] if _requested else "a signal"
        raise InterruptedStage(f"stopped by {name} {where}; rerun the same command to resume")
