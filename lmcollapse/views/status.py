"""The status of a run (``lmcollapse status``): every stage checked against its manifest and shown
as complete, damaged, stale, partial (what is done) or missing; who writes the run; what comes next.
Nothing is written: it reads markers, checkpoints and shard sidecars.

    text, healthy = describe_status(RunDir(Path("runs/tiny")))
"""

from __future__ import annotations

from lmcollapse.config import PipelineConfig, load_config
from lmcollapse.engine.checkpointer import Checkpointer
from lmcollapse.engine.shards import completed_shard, shard_ranges
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.commands import build_command, start_command, status_command
from lmcollapse.run.integrity import (
    DAMAGED,
    MISSING,
    OFF_LINEAGE,
    PARTIAL,
    PENDING,
    StageCheck,
    off_lineage,
    verify_run,
)
from lmcollapse.run.layout import GenerationDir, RunDir, family_position
from lmcollapse.run.lock import lock_holder
from lmcollapse.run.manifests import edited_pipeline, read_manifest, recorded_pipeline_digests
from lmcollapse.stages.run_file import lost_pipeline_error


def stage_lines(run: RunDir, last_generation: int, config: PipelineConfig | None = None,
                checks: dict[str, StageCheck] | None = None) -> list[str]:
    """One line per stage. With ``checks`` (from ``verify_run``) a complete stage that is damaged
    or stale says so, with the problem and the command that mends it."""
    def state(name: str, fallback: str) -> str:
        check = (checks or {}).get(name)
        if check is not None and (check.state == DAMAGED or check.state in OFF_LINEAGE):
            return f"{check.state}: {check.problem}"
        return fallback

    lines = [
        f"base           {state('base', 'complete' if run.base_manifest.is_file() else 'to build')}",
        f"human          {state('human', 'complete' if run.human_manifest.is_file() else 'to build')}",
    ]
    positions = range(1, len(config.model.entries)) if config is not None else \
        [family_position(f.name) for f in run.families_on_disk()]
    for position in positions:  # model.chain: each further family's base and human blocks
        family = run.family(position)
        for stage, marker in (("base", family.base_manifest), ("human", family.human_manifest)):
            name = f"{family.name}-{stage}"
            lines.append(f"{name:<14} {state(name, 'complete' if marker.is_file() else 'to build')}")
    # every generation on disk and the next, at least the first ten; the missing ones after them in
    # one line (`generation 100000000 --dry-run` printed a line for each)
    shown = min(last_generation, max(max((g.index for g in run.generations_on_disk()), default=-1) + 1, 9))
    for index in range(shown + 1):
        generation = run.generation(index)
        lines.append(f"{generation.name:<14} {state(generation.name, generation_state(generation, config))}")
    if last_generation > shown:
        lines.append(f"{run.generation(shown + 1).name} .. {run.generation(last_generation).name}: missing "
                     f"({last_generation - shown} generations)")
    return lines


def generation_state(generation: GenerationDir, config: PipelineConfig | None) -> str:
    """complete / partial (what is done) / missing, from what is on disk."""
    if generation.is_complete:
        return "complete"
    if not generation.root.exists():
        return "missing"
    done = []
    if generation.train_set.is_file():
        done.append("training set")
    if generation.model.is_dir():
        done.append("model trained")
    else:
        checkpoint = Checkpointer(generation.checkpoints).latest()
        if checkpoint is not None:
            total = ""
            if config is not None and generation.train_set.is_file():
                import pyarrow.parquet as pq

                blocks = pq.ParquetFile(generation.train_set).metadata.num_rows
                total = f" of {config.train.epochs * config.train.steps_per_epoch(blocks)}"
            done.append(f"training at step {checkpoint.step}{total}")
    sidecars = generation.synthetic_sidecars()
    if sidecars:
        finished = sum(1 for s in sidecars if completed_shard(generation.synthetic, int(s.stem.split("-")[1])))
        total = ""
        human = RunDir(generation.root.parent).human_manifest
        if config is not None and human.is_file():
            # Every corpus has the human training set's size, whatever the training set's.
            rows = read_manifest(human)["train"]["blocks"]
            total = f" of {len(shard_ranges(rows, config.generate.shard_size))}"
        done.append(f"{finished}{total} shards")
    evaluated = [p.stem for p in sorted(generation.eval.glob("*.json"))] if generation.eval.is_dir() else []
    if evaluated:
        done.append("eval: " + ", ".join(evaluated))
    return "partial (" + (", ".join(done) if done else "started") + ")"


def describe_status(run: RunDir, quick: bool = False) -> tuple[str, bool]:
    """The status text, and whether every complete stage checked out (files hashed unless ``quick``)."""
    if run.root.exists() and not run.root.is_dir():
        raise LmcollapseError(f"RUN={run.root} is a file, not a run folder: name the folder of a run, e.g. RUN=runs/tiny")
    if not run.pipeline_file.is_file():
        # a folder of seeds or regimes, or a study's (variant/seed-k)
        below = sorted([*run.root.glob("*/pipeline.yaml"), *run.root.glob("*/*/pipeline.yaml")]) \
            if run.root.is_dir() else []
        if below:
            raise LmcollapseError(f"{run.root} is a folder of runs, and status checks one run: "
                                  f"{status_command(below[0].parent)}")
        recorded = next(recorded_pipeline_digests(run), None)
        if recorded is not None:
            raise lost_pipeline_error(run, *recorded)
        raise LmcollapseError(f"{run.root} is not a run (no pipeline.yaml): start one with {start_command(run.root)}")
    config = load_config(run.pipeline_file)
    checks = {c.name: c for c in verify_run(run, quick=quick)}
    on_disk = [g.index for g in run.generations_on_disk()]
    last = max(on_disk + [config.generations - 1])
    lines = [f"run {run.root}: pipeline {config.name}, seed {config.seed}, fingerprint {config.fingerprint()[:12]}"]
    holder = lock_holder(run)
    lines.append(f"writer: {holder}" if holder else "writer: none (the run is not being written)")
    lines.extend(stage_lines(run, last, config, checks))
    left_out = off_lineage(checks.values())
    complete = [g.index for g in run.complete_generations() if g.name not in left_out]
    first_missing = next((i for i in range(last + 2) if i not in complete), last + 1)
    damaged = [c for c in checks.values() if c.state == DAMAGED]
    pending = [c for c in checks.values() if c.state == PENDING]
    if damaged:  # building would stop on it: the mend comes first
        lines.append(f"next: mend {damaged[0].name} first (building stops on it): restore the file named above, or "
                     f"rebuild it: {damaged[0].fix}")
    elif pending:
        # what the first pending stage waits for (a missing generation has no check of its own)
        waited = next((c.name for c in checks.values() if c.state in (MISSING, PARTIAL)), run.generation(first_missing).name)
        lines.append(f"next: {build_command(run.root, last)} would build {waited}, then keep each pending stage "
                     "whose inputs come out byte-identical (else move it to stale/ and rebuild it)")
    elif first_missing <= last:
        state = generation_state(run.generation(first_missing), config)
        action = "resume" if state.startswith("partial") else "build"
        lines.append(f"next: {build_command(run.root, last)} would {action} {run.generation(first_missing).name}"
                     + (f" and build up to generation-{last:02d}" if first_missing < last else ""))
    else:
        lines.append(f"next: all {last + 1} generations are complete; {build_command(run.root, last + 1)} builds one more")
    if not run.metrics_csv.is_file() and complete:
        lines.append(f"metrics.csv is missing: {build_command(run.root, max(complete))} rebuilds it")
    edited = edited_pipeline(run)
    if edited is not None:
        lines.append(f"problem: {run.pipeline_file} was edited after its {edited} stage was built with it (building stops on it): "
                     "put back the settings it was built with, or start a new RUN=... for the new ones")
    healthy = edited is None and not any(c.state == DAMAGED or c.state in OFF_LINEAGE for c in checks.values())
    if not healthy:
        lines.append("problems found: see the damaged/stale/pending lines above")
    elif not quick:
        lines.append("verified: every file of every complete stage matches its manifest")
    return "\n".join(lines), healthy
