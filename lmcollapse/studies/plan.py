"""What a study will do, and doing it: the plan (every run, its folder, its estimated cost), and
the launch of what is not complete on the chosen launcher.

    print(plan_study(study))
    code = run_study(study, launcher="local", slots=2)
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from lmcollapse.errors import LmcollapseError
from lmcollapse.run.commands import study_command
from lmcollapse.run.layout import RunDir
from lmcollapse.studies.bases import bases_to_build, pretrain_argv
from lmcollapse.studies.ledger import coordinator_lock
from lmcollapse.studies.local import local_slots, run_locally, visible_gpus
from lmcollapse.studies.spec import Study, StudyRun, lmcollapse_command
from lmcollapse.studies.status import CHANGED, COMPLETE, QUEUED, RUNNING, run_states
from lmcollapse.views.cost import duration, this_device
from lmcollapse.views.plan import BuildEstimate, build_estimate


def plan_study(study: Study) -> str:
    """Every run, its folder and what it still costs on this machine (the plan's cost model), the
    pretrained bases built once, and the totals; nothing is computed or written."""
    spec = study.spec
    runs = study.runs()
    lines = [f"study {study.name} ({study.path}): {len(study.variants)} variant(s) x {len(spec.seeds)} seed(s) = "
             f"{len(runs)} runs in {study.root}/, launcher {spec.launcher}, reference {study.reference}"]
    if spec.description:
        lines.append(f"  {spec.description}")
    for variant in study.variants:
        overrides = " ".join(variant.overrides) or "(as the pipeline is)"
        lines.append(f"variant {variant.name}: {variant.pipeline} {overrides}")
    device = this_device()
    total_seconds = total_disk = 0.0
    for run in runs:
        estimate = build_estimate(run.config, RunDir(run.folder), run.last_generation, device)
        if estimate is None:
            cost = "no estimate (the model's size is known once it is downloaded)"
        else:
            seconds = estimate.generations * estimate.seconds_per_generation
            total_seconds += seconds
            total_disk += estimate.disk_bytes
            cost = f"{estimate.generations} generation(s) to build, ~{duration(seconds)}" if estimate.generations \
                else "complete"
        lines.append(f"  {run.name:<40} {run.folder}  {cost}")
    bases = bases_to_build(runs)
    pretraining = sum((build_estimate(b.config, RunDir(b.folder), 0, device) or _NONE).pretrain_seconds for b in bases)
    if bases:
        lines.append(f"pretrained base(s) to build first, once: {len(bases)} (~{duration(pretraining)})")
    resources = spec.resources
    lines.append(f"each run: {resources.cpus} CPU thread(s), {resources.gpus} GPU(s), {resources.memory_gb:g} GB, "
                 f"{resources.processes} process(es), {resources.time_minutes} min a job")
    lines.append(f"total: ~{duration(total_seconds + pretraining)} of compute one run at a time on this "
                 f"machine, ~{total_disk / 1e9:.2f} GB of disk")
    return "\n".join(lines)


_NONE = BuildEstimate(0, 0.0, 0.0, 0.0)


def run_study(study: Study, launcher: str | None = None, slots: int | None = None, dry_run: bool = False,
              echo=print) -> int:
    """Launch every run that is not complete (nor running or queued already); 0 if all completed
    (local) or were submitted (SLURM)."""
    launcher = launcher or study.spec.launcher
    if launcher == "slurm" and slots is not None:
        raise LmcollapseError("--slots is the local launcher's: on SLURM, slurm.array_parallelism in the study file caps "
                              "how many runs run at once")
    states = run_states(study)
    changed = [s for s in states if s.state == CHANGED]
    if changed:
        raise LmcollapseError(f"{changed[0].run.name}: {changed[0].detail}"
                              + (f" ({len(changed) - 1} more run(s) too: {study_command('status', study.path)})"
                                 if len(changed) > 1 else ""))
    todo = [s.run for s in states if s.state not in (COMPLETE, RUNNING, QUEUED)]
    busy = [s for s in states if s.state in (RUNNING, QUEUED)]
    for state in busy:
        echo(f"{state.run.name}: {state.state} ({state.detail}); not launched again")
    if launcher == "slurm":
        from lmcollapse.studies.slurm import sbatch_script, submit

        if dry_run:
            echo(sbatch_script(study, max(len(todo), 1)))
            return 0
        if not todo:
            echo(f"study {study.name}: nothing to submit ({len(states) - len(busy)} complete, {len(busy)} in the queue)")
            return 0
        submit(study, todo, bases_to_build(todo), echo)  # under the coordinator's lock, once the cluster checks out
        return 0
    if launcher != "local":
        raise LmcollapseError(f"--launcher: {launcher!r} is not a launcher: use local or slurm")
    chosen = local_slots(study.spec.resources, slots)
    if not study.spec.resources.gpus and (gpus := visible_gpus()):
        echo(f"this machine shows {len(gpus)} GPU(s) and resources.gpus is 0: the runs use the CPU (set resources.gpus: "
             "1 in the study file to give each run a GPU)")
    if dry_run:  # each run's command as a slot starts it (its threads and GPUs): a line to paste into a shell
        for index, run in enumerate(todo):
            environment = [f"{key}={shlex.quote(value)}" for key, value in chosen[index % len(chosen)].environment().items()]
            echo(" ".join([*environment, shlex.join(lmcollapse_command(run.argv(), study.spec.resources.processes))]))
        return 0
    if not todo and not busy:
        echo(f"study {study.name}: all {len(states)} runs are complete")
        return 0
    with coordinator_lock(study):
        build_bases(bases_to_build(todo), echo)
        # Runs being written by another local process (a killed coordinator's) are waited for in the pool.
        return run_locally(study, todo + [s.run for s in busy if s.state == RUNNING and s.job is None], chosen, echo)


def build_bases(bases: list[StudyRun], echo=print) -> None:
    """Each missing pretrained base, one after another, with all of the machine's threads."""
    for run in bases:
        echo(f"pretraining the base {run.variant.name} needs (once; every run reuses it)")
        done = subprocess.run([sys.executable, "-m", "lmcollapse", *pretrain_argv(run)])
        if done.returncode != 0:
            raise LmcollapseError(f"pretraining the base of {run.variant.name} failed (exit {done.returncode}): see the "
                                  "lines above; the same command resumes it")
