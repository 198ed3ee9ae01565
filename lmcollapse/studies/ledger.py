"""What a study's coordinator recorded of its launches: per run, how and when it was last
launched (the local launcher's process and log, or the SLURM job id), and how the launch ended.

    <root>/.study/launches.json     {"runs": {"tiny/seed-0": {"launcher": "local", "pid": 123, ...}}}
    <root>/.study/logs/<variant>/seed-<k>.log      a local run's output
    <root>/.study/slurm/                            submitit's folder: the sbatch scripts and job logs

The runs themselves are the truth about what is done: a run is complete when its generations are,
whatever the ledger says; the ledger only says what is queued, running or has failed, and where
its log is. Only the coordinator writes it (atomically), so a killed coordinator leaves it whole.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from lmcollapse.run.atomic import read_json, write_json_atomic
from lmcollapse.run.commands import study_command
from lmcollapse.run.lock import file_lock
from lmcollapse.studies.spec import Study, StudyRun


@dataclass
class Ledger:
    path: Path
    runs: dict[str, dict]

    @classmethod
    def open(cls, study: Study) -> Ledger:
        path = study.state_dir / "launches.json"
        runs = read_json(path).get("runs", {}) if path.is_file() else {}
        return cls(path, runs)

    def record(self, run: StudyRun, **entry) -> None:
        self.runs[run.name] = {**self.runs.get(run.name, {}), **entry}
        self.save()

    def launched(self, run: StudyRun, **entry) -> None:
        """A new launch of ``run``: what an earlier one recorded is replaced."""
        self.runs[run.name] = {"launched": time.strftime("%Y-%m-%d %H:%M:%S"), **entry}
        self.save()

    def get(self, run: StudyRun) -> dict:
        return self.runs.get(run.name, {})

    def save(self) -> None:
        write_json_atomic(self.path, {"runs": self.runs})


def coordinator_lock(study: Study):
    """One ``study run`` at a time per study: two would launch every run twice and overwrite each
    other's ledger. Released by the kernel when the coordinator dies (its runs hold their own locks)."""
    return file_lock(study.state_dir / "coordinator.lock",
                     lambda holder: f"study {study.name} is being run by another `study run` ({holder}): wait for it "
                                    f"or stop it; {study_command('status', study.path)} shows its runs")


def log_path(study: Study, run: StudyRun) -> Path:
    """A local run's output, beside the study's runs (never inside a run folder: the run's files are
    what its manifests record)."""
    return study.state_dir / "logs" / run.variant.name / f"seed-{run.seed}.log"


def launched_process_alive(entry: dict, run: StudyRun) -> str | None:
    """``pid N`` where the local process the ledger names for ``run`` still runs it, else None.
    Between its start and taking its run's lock (imports, preflight: seconds) only this tells that
    a killed coordinator's run is under way. The pid must still run a command naming the run's
    folder: a pid used again by another process is not the run."""
    pid = entry.get("pid") if entry.get("launcher") == "local" else None
    if not isinstance(pid, int):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone (or no /proc: then the run's lock is all there is to go by)
        return None
    return f"pid {pid}" if os.fsencode(str(run.folder)) in command else None


LAUNCH_MARK = "==== lmcollapse study run: launched"  # begins each launch's part of an appended log


def last_error_line(log: Path) -> str:
    """The last line of a log that says what went wrong (``lmcollapse: error: ...``, a traceback's
    last line), or its last line; of the last launch's part where the log holds several."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    launches = [i for i, line in enumerate(lines) if line.startswith(LAUNCH_MARK)]
    lines = lines[launches[-1] + 1:] if launches else lines  # the last launch's lines: an earlier error is history
    # lmcollapse's own line first: on SLURM, submitit's traceback of the wrapper comes after it
    for wanted in (lambda line: line.startswith("lmcollapse: error:"), lambda line: "Error" in line.split(":")[0]):
        for line in reversed(lines):
            if wanted(line):
                return line[:300]
    return lines[-1][:300] if lines else ""
