"""Studies: the file and its runs, bad files refused in one line, the local launcher (runs equal
to the same runs made alone at the same threads, a killed coordinator resumed, a failed run
beside complete ones), the status, and the report's statistics against scipy."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats

from helpers import REPO, run_cli, run_cli_light, standalone_run, tree_hashes, write_study
from helpers import study_results as results
from lmcollapse.cli import main
from lmcollapse.errors import ConfigError, LmcollapseError
from lmcollapse.run.layout import RunDir
from lmcollapse.studies import load_study
from lmcollapse.studies.ledger import log_path
from lmcollapse.studies.local import Slot, local_slots
from lmcollapse.studies.spec import Resources


def test_a_study_expands_into_ordinary_runs_with_readable_folders(tmp_path, small_corpus):
    study = load_study(write_study(tmp_path, small_corpus, variants={"warm": {"pipeline": "micro.yaml",
                                                                            "set": {"train.warmup_steps": 2}}}))
    names = [run.name for run in study.runs()]
    assert names == ["micro--train.learning_rate-0.003/seed-0", "micro--train.learning_rate-0.003/seed-1",
                     "micro--train.learning_rate-0.001/seed-0", "micro--train.learning_rate-0.001/seed-1",
                     "warm/seed-0", "warm/seed-1"]
    run = study.runs()[2]
    assert run.folder == tmp_path / "runs" / "micro--train.learning_rate-0.001" / "seed-0"
    assert (run.config.train.learning_rate, run.config.seed, run.config.generations) == (0.001, 0, 2)
    assert run.config.name == "micro--train.learning_rate-0.001"  # the report labels it by its variant
    assert run.argv()[:6] == ["generation", "1", "--pipeline", str(tmp_path / "micro.yaml"), "--run", str(run.folder)]
    assert study.reference == "micro--train.learning_rate-0.003"  # the first, unless named


@pytest.mark.parametrize("changes, message", [
    ({"seed": [0]}, "unknown config key seed (did you mean seeds?)"),
    ({"grid": {"train.learning_rate": []}}, "grid.train.learning_rate: an empty list gives no runs"),
    ({"grid": {"train.epochs": [0]}}, "variant micro--train.epochs-0: train.epochs: must be at least 1, got 0"),
    ({"grid": {"train.epoch": [1]}}, "unknown config key train.epoch (did you mean train.epochs?)"),
    ({"grid": {"train.checkpoint_every": [2, 3]}}, "variants micro--train.checkpoint_every-2 and "
     "micro--train.checkpoint_every-3 resolve to the same runs"),
    ({"reference": "nope"}, "reference: 'nope' is not a variant of this study"),
    ({"seeds": [0, 0]}, "seeds: must be distinct whole numbers"),
    ({"resources": {"cpus": 0}}, "resources.cpus: must be a whole number of at least 1"),
    ({"resources": {"gpus": 1, "processes": 2}}, "resources.processes: 2 processes need as many GPUs"),
    ({"launcher": "cloud"}, "launcher: expected one of local, slurm"),
    ({"pipelines": ["no-such-pipeline"]}, "pipeline no-such-pipeline not found"),
    ({"name": "../escape"}, "name: '../escape' is not a name"),
    ({"variants": {"../../escaped": {"pipeline": "micro.yaml"}}},
     "variants: '../../escaped' is not a name: use letters, digits, '-', '_' and '.' (not '.' or '..'), rename the "
     "variant in the study file, e.g. escaped"),
    ({"slurm": {"extra": {"hold": False}}}, "slurm.extra.hold: expected text, a whole number or true"),
    ({"slurm": {"partition": ["a", "b"]}}, "slurm.partition: expected text"),
    ({"metrics": ["ppl_blok"]}, "metrics: 'ppl_blok' is not a metric column (did you mean ppl_blocks?)"),
    ({"metrics": ["ppl_blocks", "ppl_blocks"]}, "metrics: each metric once"),
    ({"grid": {"seed": [1, 2]}}, "grid: seed is the study's to set, once for every run: use the study file's seeds:"),
    ({"variants": {"long": {"pipeline": "micro.yaml", "set": {"generations": 9}}}},
     "variants.long.set: generations is the study's to set"),
    ({"slurm": {"extra": {"comment\ntouch /tmp/pwned\n#": "x"}}}, "is not an sbatch option's long name"),
    ({"slurm": {"partition": "gpu\nrm -rf ~"}}, "slurm.partition: 'gpu\\nrm -rf ~' holds a line break"),
    ({"slurm": {"extra": {"mail-user": "me@x\ntouch /tmp/pwned"}}}, "slurm.extra.mail-user: "),
    ({"slurm": {"extra": {"output": "/tmp/elsewhere.log"}}}, "slurm.extra.output: the launcher sets --output itself"),
    ({"slurm": {"extra": {"cpus_per_task": 64}}}, "slurm.extra.cpus_per_task: the launcher sets --cpus-per-task"),
    ({"slurm": {"array_parallelism": 0}}, "slurm.array_parallelism: must be a whole number of at least 1"),
])
def test_a_bad_study_file_is_refused_in_one_line_before_anything_runs(tmp_path, small_corpus, capsys, changes, message):
    path = write_study(tmp_path, small_corpus, **changes)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert main(["study", "run", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_readmes_study_files_load_as_written(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    studies = [block for block in blocks if block.startswith("name:") and "pipelines:" in block]
    assert len(studies) >= 2
    for index, block in enumerate(studies):
        path = tmp_path / f"readme-{index}.yaml"
        path.write_text(block, encoding="utf-8")
        study = load_study(path)  # shipped pipelines by name; every key, value and variant checked
        assert study.runs() and study.reference in [variant.name for variant in study.variants]
    fragments = [block for block in blocks if re.match(r"(# .*\n)*(launcher|resources):", block)]
    assert len(fragments) >= 2  # the SLURM and the 8-GPU settings: they load in a study too
    for index, block in enumerate(fragments):
        path = tmp_path / f"fragment-{index}.yaml"
        path.write_text(f"name: fragment\npipelines: [tiny]\n{block}", encoding="utf-8")
        assert load_study(path).runs()
    shipped = load_study(REPO / "studies" / "regimes.yaml")
    shown = load_study(tmp_path / "readme-0.yaml")
    assert [v.name for v in shown.variants] == [v.name for v in shipped.variants]
    assert (shown.spec.seeds, shown.spec.resources) == (shipped.spec.seeds, shipped.spec.resources)


def test_slots_divide_the_machine_by_what_a_run_needs():
    assert local_slots(Resources(cpus=1), gpus=[], available_cores=2) == [Slot((), 1), Slot((), 1)]
    assert local_slots(Resources(cpus=2), gpus=[], available_cores=2) == [Slot((), 2)]
    assert [s.gpus for s in local_slots(Resources(gpus=2, cpus=4), gpus=[0, 1, 2, 3, 4, 5, 6, 7])] == \
        [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert local_slots(Resources(gpus=1), gpus=[3, 5], slots=1) == [Slot((3,), 1)]
    assert Slot((0, 1), 4).environment() == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(LmcollapseError, match="each run needs 2 GPU"):
        local_slots(Resources(gpus=2), gpus=[0])
    with pytest.raises(LmcollapseError, match="3 slots of 1 core"):
        local_slots(Resources(cpus=1), slots=3, gpus=[], available_cores=2)


@pytest.mark.parametrize("listed, gpus", [("0,1", ["0", "1"]), ("GPU-8f0c1d2e,GPU-77aa", ["GPU-8f0c1d2e", "GPU-77aa"]),
                                          ("MIG-1a2b", ["MIG-1a2b"]), ("", []), ("-1", []), ("2,-1,3", ["2"])])
def test_the_visible_gpus_are_read_as_cuda_reads_them(monkeypatch, listed, gpus):
    """Indices or UUIDs (as SLURM and MIG set them), up to the first invalid entry."""
    from lmcollapse.studies.local import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == gpus
    if len(gpus) == 2:
        (slot,) = local_slots(Resources(gpus=2), gpus=visible_gpus())
        assert slot.environment()["CUDA_VISIBLE_DEVICES"] == listed


def test_the_plan_lists_every_run_and_computes_nothing(tmp_path, small_corpus):
    path = write_study(tmp_path, small_corpus)
    result = run_cli("study", "plan", str(path))
    assert result.returncode == 0, result.stderr
    assert "2 variant(s) x 2 seed(s) = 4 runs" in result.stdout
    assert f"{tmp_path / 'runs' / 'micro--train.learning_rate-0.001' / 'seed-1'}  2 generation(s) to build" in result.stdout
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- the local launcher, end to end

@pytest.fixture(scope="module")
def study_done(tmp_path_factory, small_corpus):
    """The micro study run by the local launcher with two slots of one thread."""
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder, small_corpus)
    result = run_cli_light("study", "run", str(path), "--slots", "2")  # a coordinator loads no model library
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return load_study(path), result


@pytest.mark.slow
def test_every_run_of_a_study_equals_the_same_run_made_alone(study_done, tmp_path):
    study, result = study_done
    assert "4 run(s) to build in 2 slot(s) (1 thread(s), 1 thread(s))" in result.stdout
    for run in study.runs():
        assert results(RunDir(run.folder)) == results(standalone_run(run, tmp_path / run.variant.name / str(run.seed)))
        ledger = json.loads((study.state_dir / "launches.json").read_text())["runs"][run.name]
        assert (ledger["threads"], ledger["exit_code"]) == (1, 0)
        manifest = json.loads(RunDir(run.folder).generation(1).manifest.read_text())
        assert manifest["threads"] == 1  # recorded: on a CPU the numbers depend on it


@pytest.mark.slow
def test_a_complete_study_launches_nothing_and_reports_its_statistics(study_done):
    study, _ = study_done
    before = {run.name: tree_hashes(run.folder) for run in study.runs()}
    # the coordinator and the status read files: neither loads torch or the HF libraries
    again = run_cli_light("study", "run", str(study.path))
    assert again.returncode == 0 and "all 4 runs are complete" in again.stdout
    assert {run.name: tree_hashes(run.folder) for run in study.runs()} == before
    status = run_cli_light("study", "status", str(study.path))
    assert status.returncode == 0 and "totals: 4 complete" in status.stdout
    report = run_cli("study", "report", str(study.path))
    assert report.returncode == 0, report.stderr[-2000:]
    statistics = json.loads((study.root / "report" / "statistics.json").read_text())
    assert statistics["reference"] == study.reference
    # the numbers equal scipy's on the runs' own metrics.csv
    values = {}
    for run in study.runs():
        with open(RunDir(run.folder).metrics_csv, encoding="utf-8") as handle:
            row = [r for r in csv.DictReader(handle) if r["generation"] == "1"][0]
        values.setdefault(run.variant.name, []).append(float(row["ppl_blocks"]))
    other = next(name for name in values if name != study.reference)
    (difference,) = [d for d in statistics["differences"] if d["generation"] == 1 and d["metric"] == "ppl_blocks"]
    welch = stats.ttest_ind(values[other], values[study.reference], equal_var=False)
    assert difference["p_welch"] == pytest.approx(welch.pvalue)
    assert difference["difference"] == pytest.approx(sum(values[other]) / 2 - sum(values[study.reference]) / 2)
    assert difference["test"] == "permutation"  # two seeds each: the exact test decides
    index = (study.root / "report" / "index.md").read_text()
    assert "## Statistics" in index and "after Holm's adjustment" in index and "intervals.png" in index
    assert "With 2 seeds against 2, no difference can be significant here whatever its size" in index


@pytest.mark.slow
def test_a_run_built_from_other_settings_is_named_and_nothing_is_launched(study_done, tmp_path, small_corpus):
    study, _ = study_done
    # the same study (same variant names, same folders) with its pipeline edited underneath it
    path = write_study(tmp_path, small_corpus, root=str(study.root))
    (tmp_path / "micro.yaml").write_text((tmp_path / "micro.yaml").read_text().replace("epochs: 1", "epochs: 3"))
    before = tree_hashes(study.root)
    status = run_cli("study", "status", str(path)).stdout
    assert "changed" in status and "built from another config than the study's (train.epochs: 1 -> 3)" in status
    result = run_cli("study", "run", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "move " in result.stderr and "or give the variant a new name" in result.stderr
    # nor are its runs reported under the variants' names: they computed something else
    report = run_cli("study", "report", str(path))
    assert report.returncode == 2 and report.stderr.count("\n") == 1, report.stderr
    assert "every run of study micro-study was built from another config than its variants give now" in report.stderr
    assert tree_hashes(study.root) == before


# `python -m lmcollapse` as a terminal starts it: SIGINT handled and not blocked. A test session
# started in the background of a script (`cmd &` in a non-interactive shell, as CI and nohup may
# start it) has SIGINT ignored from its first instant (every xdist worker's /proc/self/status said
# so); each process it starts inherits that across exec, and Python leaves an ignored SIGINT
# ignored, so a coordinator started plainly never saw its Ctrl-C. The runs are not affected: they
# install their own handlers (stop_on_signals).
AS_FROM_A_TERMINAL = ("import runpy, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
                      "signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'lmcollapse'; "
                      "runpy.run_module('lmcollapse', run_name='__main__', alter_sys=True)")


def signal_state(pid: int | str = "self") -> str:
    """The blocked, ignored and caught signal masks of a process (/proc/PID/status), for messages."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return " ".join(line.replace("\t", "") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def coordinator_until(path, condition, seconds: float = 300, env: dict | None = None) -> subprocess.Popen:
    """``study run`` with two slots in a process of its own, returned once ``condition()`` holds."""
    coordinator = subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "study", "run", str(path), "--slots", "2"],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True, env={**os.environ, **(env or {})})
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline and coordinator.poll() is None, coordinator.stdout.read()
        time.sleep(0.1)
    return coordinator


def finishes_as_if_uninterrupted(study, reference) -> None:
    """The same ``study run`` again completes ``study``, every run equal to the uninterrupted study's."""
    result = run_cli("study", "run", str(study.path), "--slots", "2")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    for ours, theirs in zip(study.runs(), reference.runs()):
        assert results(RunDir(ours.folder)) == results(RunDir(theirs.folder))


@pytest.mark.slow
def test_a_killed_coordinator_leaves_a_study_that_finishes_with_the_same_runs(tmp_path, small_corpus, study_done):
    reference, _ = study_done
    path = write_study(tmp_path, small_corpus)
    study = load_study(path)
    first = study.runs()[0]
    # one generation done, others under way
    coordinator = coordinator_until(path, lambda: RunDir(first.folder).generation(0).is_complete)
    os.kill(coordinator.pid, signal.SIGKILL)  # the coordinator alone: its runs go on, orphaned
    coordinator.wait()
    done = RunDir(first.folder).generation(0).root
    written = {file: file.stat().st_mtime_ns for file in done.rglob("*") if file.is_file()}
    finishes_as_if_uninterrupted(study, reference)  # waits for the orphans, then finishes
    # nothing complete was redone: the generation complete at the kill is the same files, untouched
    assert {file: file.stat().st_mtime_ns for file in done.rglob("*") if file.is_file()} == written


def stop_part_way(path: Path, study, stop: signal.Signals) -> list:
    """``study run`` with two slots sent ``stop`` once a run trains; the runs that were training then.

    Each run pauses 5 s at its second training step (a failpoint its processes inherit), so the
    micro runs cannot all finish before the signal arrives, however busy the machine.
    """
    training = lambda: [run for run in study.runs() if RunDir(run.folder).generation(0).train_set.is_file()]  # noqa: E731
    coordinator = coordinator_until(path, training, env={"LMCOLLAPSE_FAILPOINT": "train-step@2=sleep:5"})
    assert coordinator.poll() is None, coordinator.stdout.read()
    state = f"coordinator: {signal_state(coordinator.pid)}; test process: {signal_state()}"
    were_training = training()
    coordinator.send_signal(stop)
    output, _ = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 130, f"{state}\n{output}"
    assert "the study stopped: every run stopped at a safe point" in output
    status = run_cli("study", "status", str(path)).stdout
    assert "totals: 4 complete" not in status and "failed" not in status, status  # stopped part-way: partial
    assert "partial" in status, status
    return were_training


@pytest.mark.slow
def test_ctrl_c_stops_every_run_at_a_safe_point_and_the_same_command_goes_on(tmp_path, small_corpus, study_done):
    reference, _ = study_done
    path = write_study(tmp_path, small_corpus)
    study = load_study(path)
    stop_part_way(path, study, signal.SIGINT)  # Ctrl-C: the coordinator passes it on, once, to each run
    finishes_as_if_uninterrupted(study, reference)


@pytest.mark.slow
def test_sigterm_stops_a_study_as_ctrl_c_does(tmp_path, small_corpus):
    """``kill <pid>`` of the coordinator (a scheduler's stop, a script's): the same stop as Ctrl-C,
    each run passed one SIGINT and stopped at its safe point. Resuming from there is the Ctrl-C
    test's, the same code from here on."""
    path = write_study(tmp_path, small_corpus)
    study = load_study(path)
    for run in stop_part_way(path, study, signal.SIGTERM):
        log = log_path(study, run).read_text()
        assert re.search(r"stopped by SIGINT while training generation 0 \(step \d/3\); rerun the same command", log), log


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others_and_status_says_why(tmp_path, small_corpus):
    empty = tmp_path / "empty-corpus"
    empty.mkdir()
    (empty / "train.txt").write_text("too short\n")
    (empty / "test.txt").write_text((small_corpus / "test.txt").read_text())
    path = write_study(tmp_path, small_corpus, grid={}, seeds=[0],
                       variants={"broken": {"pipeline": "micro.yaml", "set": {"data.corpus": str(empty)}}})
    result = run_cli("study", "run", str(path), "--slots", "2")
    assert result.returncode == 1
    assert "broken/seed-0: failed (exit 2): lmcollapse: error: the train split has" in result.stdout
    status = run_cli("study", "status", str(path))
    assert "micro/seed-0" in status.stdout and "complete" in status.stdout
    line = next(line for line in status.stdout.splitlines() if "broken/seed-0" in line)
    assert "failed" in line and "fewer than one block" in line and "broken/seed-0.log" in line
    assert "totals: 1 complete, 1 failed" in status.stdout


def test_a_multi_process_run_takes_a_free_port_of_its_own():
    """Runs launched at once on one machine (the local launcher's slots, array tasks sharing a node)
    must not all meet on accelerate's default port 29500: port 0 is a free one chosen at launch
    (three launches of 2 processes at once on CPU, by hand: ports 58867, 49351, 33537, all complete)."""
    from lmcollapse.studies.spec import lmcollapse_command

    command = lmcollapse_command(["generation", "0"], processes=2)
    assert command[command.index("--main_process_port") + 1] == "0"
    assert command[-4:] == ["-m", "lmcollapse", "generation", "0"]
    assert "--main_process_port" not in lmcollapse_command(["generation", "0"], processes=1)


def test_the_local_dry_run_prints_commands_a_shell_runs_as_the_launcher_would(tmp_path, small_corpus, capsys):
    """Pasted into a shell, each line is the run's command with its slot's environment, even with a
    space and a `$` in the study's folder."""
    from lmcollapse.studies.spec import lmcollapse_command

    root = tmp_path / "my runs" / "$HOME"
    path = write_study(tmp_path, small_corpus, root=str(root))
    assert main(["study", "run", str(path), "--slots", "1", "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "OMP_NUM_THREADS=" in line]
    study = load_study(path)
    assert len(lines) == len(study.runs()) == 4
    for line, run in zip(lines, study.runs()):
        words = shlex.split(line)  # as bash splits it: quotes removed, nothing expanded inside them
        assert words[:3] == ["OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "CUDA_VISIBLE_DEVICES="]
        assert words[3:] == lmcollapse_command(run.argv()) and str(root / run.variant.name / f"seed-{run.seed}") in words
    assert not root.exists()  # a dry run builds nothing


def test_a_second_coordinator_of_the_same_study_is_refused_in_one_line(tmp_path, small_corpus, capsys):
    """Two `study run` at once would launch every run twice and overwrite each other's ledger."""
    from lmcollapse.studies.ledger import coordinator_lock

    path = write_study(tmp_path, small_corpus)
    with coordinator_lock(load_study(path)):  # another coordinator, running
        assert main(["study", "run", str(path), "--slots", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is being run by another `study run` (pid " in err
    assert f"make study-status STUDY={path} shows its runs" in err  # from the repository: make's form
    assert not any((tmp_path / "runs").glob("*/seed-*"))  # nothing launched


def test_a_run_launched_by_a_killed_coordinator_counts_as_running_before_it_takes_its_lock(tmp_path, small_corpus):
    """Between its start and its run lock (imports, preflight) only the ledger's pid tells that a
    run is under way: a coordinator killed then must not leave it to be launched twice. A pid that
    now runs something else is not the run."""
    from lmcollapse.studies.ledger import Ledger, launched_process_alive
    from lmcollapse.studies.status import RUNNING, run_states

    study = load_study(write_study(tmp_path, small_corpus))
    first, second = study.runs()[:2]
    imitation = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--run", str(first.folder)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ledger = Ledger.open(study)
        ledger.launched(first, launcher="local", pid=imitation.pid)
        ledger.launched(second, launcher="local", pid=other.pid)
        assert launched_process_alive(ledger.get(first), first) == f"pid {imitation.pid}"
        assert launched_process_alive(ledger.get(second), second) is None
        states = {state.run.name: state for state in run_states(study)}
        assert states[first.name].state == RUNNING and f"pid {imitation.pid}" in states[first.name].detail
        assert states[second.name].state != RUNNING
    finally:
        for process in (imitation, other):
            process.kill()
            process.wait()
    assert launched_process_alive(ledger.get(first), first) is None  # gone


def test_a_failed_runs_error_line_is_its_last_launchs(tmp_path):
    """Local logs are appended to, launch after launch: an error fixed since is history."""
    from lmcollapse.studies.ledger import LAUNCH_MARK, last_error_line

    log = tmp_path / "seed-0.log"
    log.write_text(f"{LAUNCH_MARK} 2026-12-07 10:00:00 (1 thread(s)) ====\nlmcollapse: error: the old problem\n"
                   f"{LAUNCH_MARK} 2026-12-07 11:00:00 (1 thread(s)) ====\nTraceback (most recent call last):\n"
                   "  File \"x.py\", line 1\nRuntimeError: the new one\n")
    assert last_error_line(log) == "RuntimeError: the new one"


def test_without_squeue_a_submitted_study_says_so_instead_of_calling_its_jobs_failed(tmp_path, small_corpus, capsys,
                                                                                    monkeypatch):
    from lmcollapse.studies.ledger import Ledger

    path = write_study(tmp_path, small_corpus)
    study = load_study(path)
    Ledger.open(study).launched(study.runs()[0], launcher="slurm", job_id="4242_0", log=str(tmp_path / "none.log"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    assert main(["study", "status", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "squeue is not on PATH" in err and "login node" in err


def test_a_text_value_stays_one_value_whatever_it_holds(tmp_path, small_corpus):
    """An override's words are split where they hold `=`: a variant's text must not become a
    second setting (here a hidden seed and epochs)."""
    text = "hi train.epochs=7 seed=9"  # plain YAML: unquoted, its words were three overrides
    path = write_study(tmp_path, small_corpus, grid={}, variants={"noted": {"pipeline": "micro.yaml",
                                                                            "set": {"description": text,
                                                                                    "train.learning_rate": 0.002}}})
    run = next(run for run in load_study(path).runs() if run.variant.name == "noted")
    assert run.config.description == text
    assert (run.config.train.epochs, run.config.seed) == (1, 0)


@pytest.mark.parametrize("arguments, message", [
    (["plan", "--launcher", "slurm"], "--launcher is an option of study run, not of study plan: leave it out"),
    (["report", "--dry-run"], "--dry-run is an option of study run, not of study report"),
    (["status", "--out", "x"], "--out is an option of study report, not of study status"),
    (["plan", "--slots", "2"], "--slots is an option of study run and study status, not of study plan"),
    (["run", "--launcher", "slurm", "--slots", "2", "--dry-run"], "--slots is the local launcher's: on SLURM"),
])
def test_a_study_option_the_action_does_not_read_is_refused(tmp_path, small_corpus, capsys, arguments, message):
    """Accepted and ignored, `study plan --launcher slurm` printed the local plan."""
    path = write_study(tmp_path, small_corpus)
    action, *options = arguments
    assert main(["study", action, str(path), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
