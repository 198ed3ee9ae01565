"""The local launcher: several runs of a study at once on this machine, one per slot.

A slot is a share of the machine that one run has to itself: on a GPU machine, ``resources.gpus``
GPUs (``CUDA_VISIBLE_DEVICES``; several make an ``accelerate launch`` run with one process per
GPU); without GPUs, ``resources.cpus`` cores, the run's threads set explicitly (``OMP_NUM_THREADS``).
A run's numbers depend on its thread count on a CPU (float sums in another order), never on how
many runs share the machine beside it: a run with 1 thread is byte-identical to the same run made
alone with ``OMP_NUM_THREADS=1`` (tests/test_studies.py).

Each run is the ordinary command (``python -m lmcollapse generation N --run <folder> ...``) in a
process of its own, its output in ``<root>/.study/logs/``; a failed run does not stop the others.
Ctrl-C (or SIGTERM) stops every run at a safe point; a killed coordinator leaves its runs resumable
(each holds its run's lock while it writes; the next ``study run`` waits for any still running).

    exit_code = run_locally(study, todo, slots=local_slots(study.spec.resources), echo=print)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from lmcollapse.errors import InterruptedStage, LmcollapseError
from lmcollapse.run.layout import RunDir
from lmcollapse.run.lock import lock_holder
from lmcollapse.run.manifests import physical_memory_bytes
from lmcollapse.studies.ledger import LAUNCH_MARK, Ledger, last_error_line, launched_process_alive, log_path
from lmcollapse.studies.spec import Resources, Study, StudyRun, lmcollapse_command

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Slot:
    gpus: tuple[str | int, ...]  # the GPUs this slot's run sees, as CUDA_VISIBLE_DEVICES names them (none on a CPU)
    threads: int

    def environment(self) -> dict[str, str]:
        threads = str(self.threads)
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpus))}

    def describe(self) -> str:
        return f"GPU {','.join(map(str, self.gpus))}" if self.gpus else f"{self.threads} thread(s)"


def visible_gpus() -> list[str]:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES`` honoured: indices or ``GPU-``/``MIG-``
    UUIDs, as CUDA reads it, up to its first entry that is neither), without starting CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = []
        for entry in (part.strip() for part in listed.split(",")):
            if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
                break  # CUDA ignores the rest of the list from an invalid entry on (-1: none at all)
            gpus.append(entry)
        return gpus
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in found.stdout.split() if line.isdigit()] if found.returncode == 0 else []


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def memory_gb() -> float:
    """This machine's memory, GB (as Linux reports it; infinite where it does not)."""
    return physical_memory_bytes() / 2**30


def local_slots(resources: Resources, slots: int | None = None, gpus: list[str | int] | None = None,
                available_cores: int | None = None) -> list[Slot]:
    """The machine divided by what one run needs: GPUs into groups of ``resources.gpus``, or the
    cores into runs of ``resources.cpus`` threads; ``slots`` caps (or, without GPUs, sets) how many."""
    gpus = visible_gpus() if gpus is None else gpus
    available_cores = available_cores or cores()
    if resources.gpus:
        if len(gpus) < resources.gpus:
            raise LmcollapseError(f"resources.gpus: each run needs {resources.gpus} GPU(s) and this machine shows "
                                  f"{len(gpus)}: lower resources.gpus, or use launcher: slurm")
        groups = [tuple(gpus[i:i + resources.gpus]) for i in range(0, len(gpus) - resources.gpus + 1, resources.gpus)]
        return [Slot(group, resources.cpus) for group in groups[:slots or len(groups)]]
    per_run = resources.cpus * resources.processes
    # as many as the cores hold, and the memory: runs that swap are slower than runs that wait
    count = slots or max(1, min(available_cores // per_run, int(memory_gb() // resources.memory_gb)))
    if count * per_run > available_cores:
        raise LmcollapseError(f"{count} slots of {per_run} core(s) each need {count * per_run} cores and this machine "
                              f"has {available_cores}: lower --slots or resources.cpus (runs sharing cores would all slow down)")
    return [Slot((), resources.cpus) for _ in range(count)]


class LocalPool:
    """The coordinator's loop: start runs into free slots, record how each ends."""

    def __init__(self, study: Study, slots: list[Slot], echo=print):
        self.study, self.slots, self.echo = study, slots, echo
        self.ledger = Ledger.open(study)
        self.active: dict[int, tuple[StudyRun, subprocess.Popen]] = {}  # slot index -> its run
        self.elsewhere: dict[int, StudyRun] = {}  # slot index -> a run another process is writing
        self.failed: list[StudyRun] = []

    def run(self, todo: list[StudyRun]) -> int:
        pending = list(todo)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while pending or self.active or self.elsewhere:
                self._release_finished()
                for index in self._free_slots():
                    if not pending:
                        break
                    self._start(index, pending.pop(0))
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._stop_all()
            raise InterruptedStage("the study stopped: every run stopped at a safe point; the same command goes on "
                                   "(`study status` shows where each run is)") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 1 if self.failed else 0

    def _free_slots(self) -> list[int]:
        return [i for i in range(len(self.slots)) if i not in self.active and i not in self.elsewhere]

    def _start(self, index: int, run: StudyRun) -> None:
        holder = lock_holder(RunDir(run.folder)) or launched_process_alive(self.ledger.get(run), run)
        if holder is not None:  # a run another process writes (a killed coordinator's): it has this slot
            self.echo(f"{run.name}: being written by {holder}; waiting for it")
            self.elsewhere[index] = run
            return
        slot = self.slots[index]
        log = log_path(self.study, run)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as output:
            output.write(f"{LAUNCH_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')} ({slot.describe()}) ====\n".encode())
            output.flush()
            # A session of its own: Ctrl-C reaches the coordinator alone, which passes each run one SIGINT
            # (a second would stop it at once, without its checkpoint).
            process = subprocess.Popen(lmcollapse_command(run.argv(), self.study.spec.resources.processes), stdout=output,
                                       stderr=subprocess.STDOUT, env={**os.environ, **slot.environment()},
                                       start_new_session=True)
        self.active[index] = (run, process)
        self.ledger.launched(run, launcher="local", pid=process.pid, log=str(log), threads=slot.threads,
                             gpus=list(slot.gpus), processes=self.study.spec.resources.processes)
        self.echo(f"{run.name}: started ({slot.describe()}, pid {process.pid}, log {log})")

    def _release_finished(self) -> None:
        for index, (run, process) in list(self.active.items()):
            code = process.poll()
            if code is None:
                continue
            del self.active[index]
            self.ledger.record(run, exit_code=code, ended=time.strftime("%Y-%m-%d %H:%M:%S"))
            if code == 0:
                self.echo(f"{run.name}: complete")
            else:
                self.failed.append(run)
                self.echo(f"{run.name}: failed (exit {code}): {last_error_line(log_path(self.study, run))} "
                          f"(log: {log_path(self.study, run)})")
        for index, run in list(self.elsewhere.items()):
            if lock_holder(RunDir(run.folder)) is None and launched_process_alive(self.ledger.get(run), run) is None:
                # its writer is done: finish it here if it is not complete
                del self.elsewhere[index]
                self._start(index, run)

    def _stop_all(self) -> None:
        """Every run stops at its next safe point (SIGINT, as Ctrl-C), and is waited for."""
        for _, process in self.active.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for run, process in self.active.values():
            try:
                code = process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            self.ledger.record(run, exit_code=code, ended=time.strftime("%Y-%m-%d %H:%M:%S"))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_locally(study: Study, todo: list[StudyRun], slots: list[Slot], echo=print) -> int:
    """Run ``todo`` (the study's runs not yet complete) in ``slots``; 0 if every one completed."""
    echo(f"study {study.name}: {len(todo)} run(s) to build in {len(slots)} slot(s) "
         f"({', '.join(s.describe() for s in slots)})")
    return LocalPool(study, slots, echo).run(todo)
