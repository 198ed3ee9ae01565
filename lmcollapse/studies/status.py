"""Where every run of a study is: complete, partial (which stage of which generation), queued or
running (with its job id or process), failed (with the last error line and its log), or not
started; the totals, and an estimate of the time left.

    rows = run_states(study)                  # RunState per run, in the study's order
    print(describe_study_status(study))
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from lmcollapse.config import load_config
from lmcollapse.config.pipeline_config import result_affecting_differences
from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.metrics.columns import STAGE_SECONDS
from lmcollapse.metrics.table import collect_rows
from lmcollapse.run.commands import study_command
from lmcollapse.run.integrity import off_lineage, verify_run
from lmcollapse.run.layout import RunDir
from lmcollapse.run.lock import lock_holder
from lmcollapse.studies.ledger import Ledger, last_error_line, launched_process_alive
from lmcollapse.studies.slurm import job_ended
from lmcollapse.studies.spec import Study, StudyRun
from lmcollapse.views.cost import duration
from lmcollapse.views.status import generation_state

COMPLETE, PARTIAL, QUEUED, RUNNING, FAILED, NOT_STARTED = "complete", "partial", "queued", "running", "failed", \
    "not started"
CHANGED = "changed"  # its folder was built from another config than the study's variant now gives
INTERRUPTED = 130  # the exit code of a run stopped at a safe point (Ctrl-C, SIGTERM, SIGUSR2)


@dataclass(frozen=True)
class RunState:
    run: StudyRun
    state: str
    detail: str = ""
    generations_done: int = 0
    job: str | None = None  # its SLURM job, while it is in the queue


def complete_generations(run: StudyRun) -> int:
    """How many of the run's generations 0, 1, ... are complete and not stale (nor pending), in a row."""
    folder = RunDir(run.folder)
    if not folder.pipeline_file.is_file():
        return 0
    left_out = off_lineage(verify_run(folder, quick=True))
    done = 0
    while folder.generation(done).is_complete and folder.generation(done).name not in left_out:
        done += 1
    return done


def changed_config(run: StudyRun) -> str | None:
    """How the config a run's folder was built from differs from the one the study gives it now
    (a variant's settings edited, its name kept), or None."""
    folder = RunDir(run.folder)
    if not folder.pipeline_file.is_file():
        return None
    try:
        differences = result_affecting_differences(load_config(folder.pipeline_file), run.config)
    except LmcollapseError as err:
        return f"its pipeline.yaml does not load ({error_reason(err)})"
    if not differences:
        return None
    shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differences[:3])
    return shown + (f" and {len(differences) - 3} more" if len(differences) > 3 else "")


def run_state(study: Study, run: StudyRun, ledger: Ledger, queue: dict[str, str]) -> RunState:
    changed = changed_config(run)
    if changed is not None:
        return RunState(run, CHANGED, f"built from another config than the study's ({changed}): move {run.folder} "
                        "away, or give the variant a new name")
    done = complete_generations(run)
    total = run.last_generation + 1
    if done >= total:
        return RunState(run, COMPLETE, f"{total} generation(s)", done)
    folder = RunDir(run.folder)
    entry = ledger.get(run)
    job = entry.get("job_id")
    if job is not None and job in queue:
        state = QUEUED if queue[job] in ("PENDING", "CONFIGURING", "REQUEUED") else RUNNING
        return RunState(run, state, f"job {job}, {queue[job].lower()}; {_progress(folder, done)}", done, job)
    holder = lock_holder(folder) or launched_process_alive(entry, run)
    if holder is not None:
        return RunState(run, RUNNING, f"{holder}; {_progress(folder, done)}", done)
    if entry.get("launcher") == "slurm" and job is not None and not job_ended(entry):
        return RunState(run, QUEUED, f"job {job}, being requeued; {_progress(folder, done)}", done, job)
    failed = (entry.get("launcher") == "local" and entry.get("exit_code") not in (None, 0, INTERRUPTED)) or \
        (entry.get("launcher") == "slurm" and job is not None)  # left the queue incomplete, for good
    if failed:
        log = entry.get("log", "")
        line = last_error_line(Path(log)) if log else ""
        return RunState(run, FAILED, f"{line or 'no error line in its log'} (log: {log}); {_progress(folder, done)}",
                        done)
    if folder.root.exists():
        return RunState(run, PARTIAL, _progress(folder, done), done)
    return RunState(run, NOT_STARTED, "", 0)


def _progress(folder: RunDir, done: int) -> str:
    if not folder.root.exists():
        return "nothing built yet"
    generation = folder.generation(done)
    where = generation_state(generation, None) if generation.root.exists() else "not started"
    return f"{done} generation(s) complete, {generation.name} {where}"


def run_states(study: Study) -> list[RunState]:
    from lmcollapse.studies.slurm import queue_states

    ledger = Ledger.open(study)
    runs = study.runs()
    queue = queue_states([ledger.get(r)["job_id"] for r in runs if ledger.get(r).get("job_id")])
    return [run_state(study, run, ledger, queue) for run in runs]


def seconds_per_generation(states: list[RunState]) -> float | None:
    """The median wall time of a complete generation of this study (training, corpus, evaluation)."""
    times = []
    for entry in states:
        if entry.generations_done:
            for row in collect_rows(RunDir(entry.run.folder)):
                times.append(sum(float(row.get(key) or 0.0) for key in STAGE_SECONDS))
    return statistics.median(times) if times else None


def describe_study_status(study: Study, slots: int | None = None) -> tuple[str, bool]:
    """The status text, and whether every run is complete."""
    if not study.runs():
        raise LmcollapseError(f"study {study.name} has no runs")
    states = run_states(study)
    width = max(len(s.run.name) for s in states)
    lines = [f"study {study.name} ({study.path}): {len(states)} runs in {study.root}/, reference {study.reference}"]
    lines += [f"  {s.run.name:<{width}}  {s.state:<11} {s.detail}".rstrip() for s in states]
    counts = {state: sum(1 for s in states if s.state == state) for state in
              (COMPLETE, RUNNING, QUEUED, PARTIAL, FAILED, CHANGED, NOT_STARTED)}
    lines.append("totals: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    left = sum(s.run.last_generation + 1 - s.generations_done for s in states if s.state != COMPLETE)
    per_generation = seconds_per_generation(states)
    if left and per_generation is not None:
        parallel = max(1, slots or counts[RUNNING] or 1)
        lines.append(f"time left: {left} generation(s) to build, ~{duration(left * per_generation)} one at a time "
                     f"(median {per_generation:.0f} s a generation here), ~{duration(left * per_generation / parallel)} "
                     f"at {parallel} at once")
    elif left:
        lines.append(f"time left: {left} generation(s) to build (no generation of this study is complete yet to time)")
    if counts[FAILED]:
        lines.append(f"failed runs are resumed by the same command: {study_command('run', study.path)}")
    return "\n".join(lines), counts[COMPLETE] == len(states)
