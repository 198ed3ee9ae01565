"""The SLURM launcher: a study's runs as one job array, through submitit.

Each array task runs the ordinary command of one run (``python -m lmcollapse generation N --run
<folder> ...``) with ``resources.cpus`` threads. A task that reaches its time limit, or is
preempted, gets SIGUSR2 two minutes early: it stops its run at a safe point (the run saves a
checkpoint) and submitit requeues it, and the requeued task resumes the run where it stopped. The
pretrained base the runs need is built by a job of its own first, and the array waits for it
(``--dependency=afterok``). The jobs outlive the coordinator; ``study status`` asks squeue (no
accounting database needed) and reads the runs and the jobs' logs.

    script = sbatch_script(study, count=4)          # what --dry-run prints
    submit(study, todo, bases, echo=print)          # the job ids go to the study's ledger
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.commands import study_command
from lmcollapse.studies.bases import pretrain_argv
from lmcollapse.studies.ledger import Ledger, coordinator_lock
from lmcollapse.studies.spec import Study, StudyRun, lmcollapse_command

SIGNAL_DELAY_SECONDS = 120  # the warning before the time limit: enough to finish a step and save
REQUEUE_GRACE_SECONDS = 300


class RunJob:
    """What one array task runs: ``lmcollapse <argv>`` in a child process. On SIGUSR2 (time limit or
    preemption) submitit calls ``checkpoint``: the child gets SIGINT and saves, and the same job is
    requeued. Written as submitit's ``Checkpointable`` (a ``checkpoint`` method), without importing it
    here: submitit is imported only where jobs are submitted."""

    def __init__(self, argv: list[str], environment: dict[str, str], processes: int = 1):
        self.argv, self.environment, self.processes = list(argv), dict(environment), processes
        self.process: subprocess.Popen | None = None

    def __call__(self) -> int:
        # the local launcher's command: ``accelerate launch`` where a run asks for several processes
        self.process = subprocess.Popen(lmcollapse_command(self.argv, self.processes),
                                        env={**os.environ, **self.environment})
        # NOTE: polled, not waited on: a blocking wait holds the process's lock, and the signal
        # handler (checkpoint, below) must be able to wait for the same process.
        while (code := self.process.poll()) is None:
            time.sleep(0.5)
        if code != 0:
            raise RuntimeError(f"lmcollapse {' '.join(self.argv[:2])} exited with {code}: see the lines above")
        return code

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        if self.process is not None and self.process.poll() is None:
            # The run finishes its step, saves, exits 130 (SLURM may have signalled it already: a
            # repeated time-limit signal is one event to it).
            self.process.send_signal(signal.SIGUSR2)
            try:
                self.process.wait(timeout=SIGNAL_DELAY_SECONDS - 20)
            except subprocess.TimeoutExpired:
                pass
        return DelayedSubmission(RunJob(self.argv, self.environment, self.processes))

    def __getstate__(self) -> dict:
        return {"argv": self.argv, "environment": self.environment, "processes": self.processes, "process": None}


def job_environment(study: Study) -> dict[str, str]:
    threads = str(study.spec.resources.cpus)
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def sbatch_parameters(study: Study) -> dict:
    """The resources and options, as submitit's SlurmExecutor (sbatch's own names) takes them."""
    resources, options = study.spec.resources, study.spec.slurm
    parameters = {"job_name": f"lmcollapse-{study.name}", "time": resources.time_minutes, "nodes": 1,
                  "ntasks_per_node": 1, "cpus_per_task": resources.cpus * resources.processes,
                  "mem": f"{math.ceil(resources.memory_gb * 1024)}MB", "signal_delay_s": SIGNAL_DELAY_SECONDS,
                  "array_parallelism": options.array_parallelism}
    if resources.gpus:
        parameters["gpus_per_node"] = resources.gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(options, key):
            parameters[key] = getattr(options, key)
    if options.extra:
        parameters["additional_parameters"] = dict(options.extra)
    return parameters


def slurm_folder(study: Study) -> Path:
    return study.state_dir / "slurm"


def sbatch_script(study: Study, count: int) -> str:
    """The sbatch script of the study's array of ``count`` runs, as submitit writes it."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = slurm_folder(study) / "%j"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=count, **sbatch_parameters(study))


def check_cluster(study: Study, count: int = 1) -> None:
    """SLURM is here, some partition can hold one run, and sbatch accepts the study's script (its
    account, QoS, constraint and extra options: ``sbatch --test-only`` submits nothing): a one-line
    error naming what it cannot satisfy, before anything is submitted."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise LmcollapseError("launcher: slurm needs SLURM's sbatch and sinfo on PATH (run on a login node), or use "
                              "--launcher local")
    found = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%l|%a"], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        raise LmcollapseError(f"sinfo failed ({found.stderr.strip()[:160]}): check that SLURM answers, e.g. `sinfo`")
    partitions = Partition.merge(Partition.parse(line) for line in found.stdout.splitlines() if line.strip())
    wanted = study.spec.slurm.partition
    candidates = [p for p in partitions if (p.name == wanted if wanted else p.default)] or \
        ([] if wanted else partitions[:1])
    if not candidates:
        names = ", ".join(p.name for p in partitions) or "none"
        raise LmcollapseError(f"slurm.partition: {wanted!r} is not a partition of this cluster ({names}): set one of them")
    candidates[0].check(study)
    with tempfile.TemporaryDirectory(prefix="lmcollapse-sbatch-") as scratch:
        script = Path(scratch, "test.sh")
        script.write_text(sbatch_script(study, count), encoding="utf-8")
        tried = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60,
                               cwd=scratch)
    if tried.returncode != 0:
        reason = (tried.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("sbatch: error: ")[:200]
        raise LmcollapseError(f"sbatch refuses the study's jobs ({reason}): fix the study file's slurm or resources "
                              f"options; see the script with {study_command('run', study.path, '--dry-run')}")


class Partition:
    def __init__(self, name: str, default: bool, cpus: int, memory_mb: int, gpus: int, minutes: float, up: bool):
        self.name, self.default, self.cpus, self.memory_mb = name, default, cpus, memory_mb
        self.gpus, self.minutes, self.up = gpus, minutes, up

    @classmethod
    def merge(cls, parts) -> list[Partition]:
        """One entry per partition: sinfo prints a line per kind of node; a run fits a partition
        whose largest node holds it (CPUs, memory and GPUs of one node type would be stricter)."""
        merged: dict[str, Partition] = {}
        for part in parts:
            seen = merged.setdefault(part.name, part)
            if seen is not part:
                seen.cpus, seen.memory_mb = max(seen.cpus, part.cpus), max(seen.memory_mb, part.memory_mb)
                seen.gpus, seen.minutes = max(seen.gpus, part.gpus), max(seen.minutes, part.minutes)
                seen.up, seen.default = seen.up or part.up, seen.default or part.default
        return list(merged.values())

    @classmethod
    def parse(cls, line: str) -> Partition:
        name, cpus, memory, gres, limit, available = line.strip().split("|")
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))
        return cls(name.rstrip("*"), name.endswith("*"), int(cpus.rstrip("+")), int(memory.rstrip("+")), gpus,
                   _minutes(limit), available == "up")

    def check(self, study: Study) -> None:
        resources = study.spec.resources
        need_cpus = resources.cpus * resources.processes
        problems = []
        if not self.up:
            problems.append(f"slurm.partition: partition {self.name} is not up (sinfo): choose another in the study file")
        if need_cpus > self.cpus:
            problems.append(f"resources.cpus: a run needs {need_cpus} CPU(s) and partition {self.name}'s nodes have "
                            f"{self.cpus}: set resources: {{cpus: {max(1, self.cpus // resources.processes)}}} in the study file")
        if resources.memory_gb * 1024 > self.memory_mb:
            problems.append(f"resources.memory_gb: a run needs {resources.memory_gb:g} GB and partition {self.name}'s "
                            f"nodes have {self.memory_mb / 1024:.1f} GB: lower resources.memory_gb in the study file")
        if resources.gpus > self.gpus:
            problems.append(f"resources.gpus: a run needs {resources.gpus} GPU(s) and partition {self.name}'s nodes "
                            f"have {self.gpus}: choose a GPU partition (slurm.partition) or lower resources.gpus in the study file")
        if resources.time_minutes > self.minutes:
            problems.append(f"resources.time_minutes: {resources.time_minutes} exceeds partition {self.name}'s limit "
                            f"of {self.minutes:g} minutes: lower it in the study file (a run that reaches it is requeued and resumes)")
        if problems:
            raise LmcollapseError(problems[0])


def _minutes(limit: str) -> float:
    """sinfo's time limit (``infinite``, ``1-00:00:00``, ``2:00:00``, ``30:00``) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return math.inf
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) < 3 else parts
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60


def submit(study: Study, todo: list[StudyRun], bases: list[StudyRun], echo=print) -> list[str]:
    """Submit the bases' job (if any) and the runs' array; the job ids, recorded in the ledger."""
    import submitit

    check_cluster(study, len(todo))
    folder = slurm_folder(study) / "%j"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=20)
    parameters = sbatch_parameters(study)
    executor.update_parameters(**parameters)
    try:
        with coordinator_lock(study):  # taken once the cluster checks out: a refused study leaves no folder
            return _submit(study, todo, bases, executor, parameters, echo)
    except submitit.core.utils.FailedJobError as err:  # sbatch refused what --test-only accepted
        raise LmcollapseError(f"sbatch refused the jobs ({error_reason(err)}): check the study's slurm options, "
                              f"e.g. {study_command('run', study.path, '--dry-run')}") from None


def _submit(study: Study, todo: list[StudyRun], bases: list[StudyRun], executor, parameters: dict, echo) -> list[str]:
    environment = job_environment(study)
    ledger = Ledger.open(study)
    dependency = None
    if bases:
        with executor.batch():
            base_jobs = [executor.submit(RunJob(pretrain_argv(run), {})) for run in bases]
        dependency = "afterok:" + ":".join(job.job_id for job in base_jobs)
        echo(f"pretrained base(s) first: job(s) {', '.join(job.job_id for job in base_jobs)}")
        # a failed base cancels the array instead of leaving it pending for ever
        extra = {**parameters.get("additional_parameters", {}), "dependency": dependency, "kill_on_invalid_dep": "yes"}
        executor.update_parameters(additional_parameters=extra)
    with executor.batch():
        jobs = [executor.submit(RunJob(run.argv(), environment, study.spec.resources.processes)) for run in todo]
    for run, job in zip(todo, jobs):
        ledger.launched(run, launcher="slurm", job_id=job.job_id, log=str(job.paths.stderr),
                        output=str(job.paths.stdout), result=str(job.paths.result_pickle),
                        threads=study.spec.resources.cpus, depends_on=dependency)
        echo(f"{run.name}: job {job.job_id}")
    return [job.job_id for job in jobs]


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """squeue's state (PENDING, RUNNING, ...) of each of the jobs still in the queue, by job id;
    jobs no longer queued are absent (without an accounting database, squeue is what knows).

    NOTE: the user's whole queue is listed, not ``-j <array id>``: a requeued array task keeps its
    ``<array>_<task>`` name but no longer matches its array's id."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:  # without it a queued job would look ended: failed, launched again
        raise LmcollapseError(f"this study has runs submitted to SLURM (job {job_ids[0]}...) and squeue is not on PATH, "
                              "so whether they are queued is unknown: run the command on the cluster's login node")
    found = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:  # an unreachable controller must not make every queued run look failed
        reason = (found.stderr.strip().splitlines() or ["no message"])[-1][:160]
        raise LmcollapseError(f"squeue failed ({reason}): the jobs' states are unknown; check that SLURM answers "
                              "(`squeue --me`), e.g. SLURM_CONF")
    wanted = set(job_ids)
    states = {}
    for line in found.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in wanted:
            states[job] = state
    return states


def job_ended(entry: dict) -> bool:
    """Whether a job no longer in the queue has ended for good: it wrote its result (submitit does,
    success or failure), or SLURM cancelled it (not to requeue it). A requeued job can be missing
    from squeue for a moment between its states; it has not ended."""
    if Path(entry.get("result", "")).is_file():
        return True
    try:
        log = Path(entry.get("log", "")).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # no log at all: it never started, and is not queued either
    cancelled = [line for line in log.splitlines() if "CANCELLED AT" in line]
    requeueing = bool(cancelled) and "DUE TO JOB REQUEUE" in cancelled[-1]
    # A requeued job is back in the queue within seconds; one still missing minutes after its log's
    # last line (killed for memory, a node lost) has ended, as has any job that was not requeued.
    return not requeueing or time.time() - Path(entry["log"]).stat().st_mtime > REQUEUE_GRACE_SECONDS


def cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], check=False, timeout=60)
