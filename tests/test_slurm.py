"""The SLURM launcher against a real single-node SLURM started here (Debian's slurm-wlm and munge:
munged, slurmctld and slurmd on localhost, as root; .ci/run installs them). A study is submitted as
a job array; a cancelled job is resubmitted by ``study run``; a job sent the time-limit signal is
requeued and resumes (SLURM holds a requeued job two minutes before it starts again; the test
lifts that hold, as an administrator could, rather than wait); every run equals the same run made
alone. Without root or SLURM the tests
are skipped with the reason, except under CI=true, where they must run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import run_cli, standalone_run, write_study
from helpers import study_results as results
from lmcollapse.run.layout import RunDir
from lmcollapse.studies import load_study
from lmcollapse.studies.ledger import Ledger
from lmcollapse.studies.status import COMPLETE, FAILED, QUEUED, RUNNING, run_states

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd")


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmctld and slurmd needs root"
    missing = [name for name in (*DAEMONS, "sbatch", "squeue", "scancel", "sinfo") if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge" if missing else None


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM cluster of this machine's cores, its own config and state in a temporary
    folder (SLURM_CONF points at it); stopped afterwards."""
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but the SLURM tests cannot run: {reason}")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir()
    host = socket.gethostname()
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=lmcollapse-test", f"SlurmctldHost={host}", "AuthType=auth/munge", "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory", "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none", "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        "SlurmctldPort=6917", "SlurmdPort=6918", "ReturnToService=2", "MpiDefault=none", "SchedulerType=sched/backfill",
        "KillWait=60", f"NodeName={host} CPUs={os.cpu_count()} RealMemory=8000 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    environment = {**os.environ, "SLURM_CONF": str(conf)}
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run([_daemon("munged"), "--force"], check=True)
    subprocess.run([_daemon("slurmctld"), "-f", str(conf)], check=True, env=environment)
    subprocess.run([_daemon("slurmd"), "-f", str(conf)], check=True, env=environment)
    os.environ["SLURM_CONF"] = str(conf)
    deadline = time.time() + 60
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout:
        assert time.time() < deadline, (folder / "log" / "slurmctld.log").read_text()[-2000:]
        time.sleep(0.5)
    yield folder
    # Jobs first (a job whose run is complete may still be exiting), then the daemons: a daemon
    # stopped under a running step leaves the step's slurmstepd behind.
    def queue_empties(seconds: float) -> None:
        deadline = time.time() + seconds
        while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() and time.time() < deadline:
            time.sleep(1)
    queue_empties(60)
    subprocess.run(["scancel", "--user", "root"], capture_output=True)
    queue_empties(90)
    subprocess.run(["scontrol", "shutdown"], capture_output=True)
    for pid_file in ("slurmd.pid", "slurmctld.pid"):
        if (folder / pid_file).is_file():
            subprocess.run(["kill", (folder / pid_file).read_text().strip()], capture_output=True)
    os.environ.pop("SLURM_CONF", None)


def task_states(job: str, fields: str) -> str:
    """squeue's line for each task of ``job``'s array (``-o fields``), requeued ones included."""
    return subprocess.run(["squeue", "-h", "-r", "-j", job.split("_")[0], "-o", fields], capture_output=True, text=True).stdout


def signal_once_running(job: str, *options: str) -> bool:
    """``scancel [options] job`` if the job runs; True once SLURM took the signal. SLURM refuses to
    signal a job that is starting or being requeued ("can not be altered now"): a refusal is tried
    again, a signal taken is never sent twice (a repeated time-limit signal must not reach the
    job after it is requeued)."""
    return f"{job}|RUNNING" in task_states(job, "%i|%T") and subprocess.run(["scancel", *options, job], capture_output=True).returncode == 0


def log_shows(log: Path, line: str) -> bool:
    return line in (log.read_text(errors="replace") if log.is_file() else "")


def start_requeued_job_now(job: str) -> None:
    """Lift the two-minute hold SLURM puts on a requeued job (its begin time), once it is queued
    again: the requeue itself is what the test is about, not SLURM's wait."""
    def held() -> bool:
        return f"{job}|PENDING|BeginTime" in task_states(job, "%i|%T|%r")
    wait_for(held, f"job {job} to be queued again", 120)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True)


def wait_for(condition, what: str, seconds: float = 600, study=None):
    deadline = time.time() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            states = "; ".join(f"{s.run.name} {s.state} {s.detail}" for s in run_states(study)) if study else ""
            pytest.fail(f"timed out waiting for {what}: {states}")
        time.sleep(1)


def test_resources_slurm_cannot_satisfy_are_refused_before_anything_is_submitted(cluster, tmp_path, small_corpus):
    path = write_study(tmp_path, small_corpus, launcher="slurm", resources={"cpus": 64, "memory_gb": 1})
    result = run_cli("study", "run", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"lmcollapse: error: resources.cpus: a run needs 64 CPU(s) and partition debug's "
                                     f"nodes have {os.cpu_count()}: set resources: {{cpus: {os.cpu_count()}}} in the study file")
    assert not (tmp_path / "runs").exists()
    path = write_study(tmp_path, small_corpus, launcher="slurm", slurm={"partition": "gpu"})
    assert "slurm.partition: 'gpu' is not a partition of this cluster (debug)" in run_cli("study", "run", str(path)).stderr
    # what only sbatch knows (a feature no node has, an unknown option value): sbatch --test-only says it
    path = write_study(tmp_path, small_corpus, launcher="slurm", slurm={"constraint": "no-such-feature"})
    result = run_cli("study", "run", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "sbatch refuses the study's jobs (" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "runs").exists()
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""


def test_the_dry_run_prints_the_array_script(tmp_path, small_corpus):
    """No cluster needed: the script is submitit's, written from the study file's resources."""
    path = write_study(tmp_path, small_corpus, launcher="slurm", slurm={"qos": "normal", "extra": {"exclude": "node9"}})
    result = run_cli("study", "run", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=1024MB", "#SBATCH --time=10",
                 "#SBATCH --qos=normal", "#SBATCH --exclude=node9", "#SBATCH --signal=USR2@120",
                 "-u -m submitit.core._submit"):
        assert line in result.stdout
    assert not (tmp_path / "runs").exists()


def test_a_study_on_slurm_survives_a_cancelled_job_and_a_time_limit(cluster, tmp_path, small_corpus):
    # Two runs of one generation. Every process of the first submission pauses 10 s at its first
    # training step (a failpoint the jobs inherit; a sleep changes nothing they compute), so both
    # signals below land mid-run, however fast the machine trains.
    path = write_study(tmp_path, small_corpus, launcher="slurm", seeds=[0], generations=1,
                       grid={"train.learning_rate": [0.003, 0.001], "train.epochs": [20]})
    study = load_study(path)
    first = run_cli("study", "run", str(path), cwd=tmp_path, env={"LMCOLLAPSE_FAILPOINT": "train-step@1=sleep:10"})
    assert first.returncode == 0, first.stdout + first.stderr
    ledger = Ledger.open(study)
    timed, cancelled = study.runs()
    jobs = [ledger.get(run)["job_id"] for run in (timed, cancelled)]
    assert len({job.split("_")[0] for job in jobs}) == 1 and [j.split("_")[1] for j in jobs] == ["0", "1"]
    states = run_states(study)
    assert all(s.state in (QUEUED, RUNNING) for s in states), [s.detail for s in states]
    assert any(f"job {jobs[0]}" in s.detail for s in states)

    # Each run is signalled once it trains. The first as at its time limit: SLURM's warning signal
    # (USR2); the run stops at a safe point, submitit requeues the job, and the requeued job resumes
    # the run. The second is cancelled by its user: it stays cancelled, its run left partial.
    timed_log, cancelled_log = Path(ledger.get(timed)["output"]), Path(ledger.get(cancelled)["log"])
    unsent = {jobs[0]: (timed, ("--signal=USR2",)), jobs[1]: (cancelled, ())}

    def both_signalled() -> bool:
        for job, (run, options) in list(unsent.items()):
            if RunDir(run.folder).generation(0).train_set.is_file() and signal_once_running(job, *options):
                del unsent[job]
        return not unsent
    wait_for(both_signalled, "both runs to start training and be signalled")
    wait_for(lambda: log_shows(timed_log, "Requeued job"), "the time-limit signal to requeue the first job")
    start_requeued_job_now(jobs[0])
    wait_for(lambda: log_shows(cancelled_log, "CANCELLED AT"), "the second job to be cancelled")
    assert {s.run.name: s.state for s in run_states(study)}[timed.name] in (QUEUED, RUNNING)  # being requeued
    wait_for(lambda: all(s.state not in (QUEUED, RUNNING) for s in run_states(study)), "the queue to empty", study=study)
    states = {s.run.name: s for s in run_states(study)}
    assert states[timed.name].state == COMPLETE, states[timed.name].detail  # requeued, resumed, finished
    assert states[cancelled.name].state == FAILED, states[cancelled.name].detail
    assert "stopped by SIGUSR2 while training generation 0" in Path(ledger.get(timed)["log"]).read_text()
    status = run_cli("study", "status", str(path), cwd=tmp_path)
    assert re.search(rf"{re.escape(cancelled.name)}\s+failed", status.stdout) and f"lmcollapse study run {path}" in status.stdout

    again = run_cli("study", "run", str(path), cwd=tmp_path)  # only the cancelled run is submitted again
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": job ") == 1 and f"{cancelled.name}: job " in again.stdout
    wait_for(lambda: all(s.state == COMPLETE for s in run_states(study)), "every run to complete", study=study)
    for run in study.runs():
        assert results(RunDir(run.folder)) == results(standalone_run(run, tmp_path / "alone" / run.variant.name))


def test_job_states_are_read_without_an_accounting_database(cluster, tmp_path, small_corpus):
    path = write_study(tmp_path, small_corpus, launcher="slurm", seeds=[0], grid={},
                       slurm={"extra": {"hold": True}})  # held: queued until released
    study = load_study(path)
    assert run_cli("study", "run", str(path), cwd=tmp_path).returncode == 0
    (state,) = run_states(study)
    assert state.state == QUEUED and f"job {state.job}, pending" in state.detail
    assert "sacct" not in yaml.safe_dump(state.detail)
    subprocess.run(["scontrol", "release", state.job.split("_")[0]], check=True)
    wait_for(lambda: run_states(study)[0].state == COMPLETE, "the released job to complete")
