"""Progress bars: hidden ones cost nothing; shown ones suit a log file."""

from __future__ import annotations

import threading

from lmcollapse.run.progress import LOG_INTERVAL_SECONDS, progress_bar


def test_a_hidden_bar_counts_and_starts_no_thread():
    """--no-progress: the bar still iterates and counts, but tqdm's monitor thread (which every
    tqdm bar starts, disabled or not) is not started."""
    before = {thread.ident for thread in threading.enumerate()}
    bar = progress_bar(range(3), enabled=False, desc="hidden")
    assert list(bar) == [0, 1, 2]
    assert {thread.ident for thread in threading.enumerate()} - before == set()  # none new
    bar.close()


def test_a_shown_bar_refreshes_sparsely_when_stderr_is_not_a_terminal(capsys):
    """Under pytest stderr is captured, as in a batch job: one refresh per 30 s, not ten a second."""
    bar = progress_bar(total=2, desc="shown")
    assert bar.mininterval == LOG_INTERVAL_SECONDS
    bar.update(2)
    bar.close()
    assert "shown" in capsys.readouterr().err
