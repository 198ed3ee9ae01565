"""The collapse pipeline, stage by stage: base model, human data, then generations 0..N.

    build(config, Path("runs/tiny"), last_generation=4)   # what `make generation-4` does

Stages, each idempotent and marked complete by a file written last and atomically, each in the
module that bears its name:

1. ``base``    the starting model and tokenizer: a preset pretrained once (pretrain.py), a preset
               with fresh weights, or a pretrained model; its zero-shot perplexity (base.py);
2. ``human``   the human train, validation and held-out splits, tokenized and cut into blocks with
               provenance (human.py); with ``model.chain``, each further family has its own base
               and human blocks (``family-01/``, ...), made the same way with its own config;
3. ``generation-k`` for k = 0..N, in order (generation.py, one call per stage):
   a. the training set: the regime's, decontaminated if asked (training_set.py);
   b. training from ``model.init``'s start, resumable from checkpoints (train.py);
   c. the synthetic corpus: every training block continued by the trained model (generate.py);
   d. evaluation: held-out perplexity, text metrics of the corpus, tails (evaluate.py);
   e. the manifest: fingerprints of everything consumed and produced, timings, the metrics row.

Completed generations are skipped; a stopped one resumes where it stopped. Before a stage
consumes an earlier stage's output it checks the sha256 recorded when that stage completed.
This module is the run around the stages: the lock, the resolved config, damaged and stale
stages, read-only runs, and the metrics table.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from pathlib import Path

from accelerate.utils import broadcast_object_list

from lmcollapse.config import PipelineConfig
from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.errors import LmcollapseError
from lmcollapse.metrics.table import collect_rows, format_table, refresh_metrics
from lmcollapse.run.atomic import existing_ancestor, read_json, write_text_atomic
from lmcollapse.run.commands import build_command
from lmcollapse.run.integrity import COMPLETE, DAMAGED, PENDING, STALE, StageCheck, verify_run
from lmcollapse.run.interrupts import check_stop, stop_on_signals
from lmcollapse.run.layout import GenerationDir, RunDir
from lmcollapse.run.lock import run_lock
from lmcollapse.run.manifests import check_unchanged, read_manifest, recorded_files, recorded_pipeline_digests
from lmcollapse.stages.base import ensure_base_and_human, ensure_base_eval
from lmcollapse.stages.context import Context, make_accelerator
from lmcollapse.stages.evaluate import ensure_human_mauve
from lmcollapse.stages.generation import build_generation
from lmcollapse.stages.preflight import check_same_config, preflight
from lmcollapse.stages.pretrain import ensure_pretrained_base
from lmcollapse.stages.run_file import pipeline_yaml_text
from lmcollapse.stages.tracking import RunTracker

log = logging.getLogger(__name__)

__all__ = ["Context", "build", "make_accelerator"]


def build(config: PipelineConfig, run_root: Path, last_generation: int, *, accept_changed: bool = False,
          progress: bool = True, echo=print) -> list[dict]:
    """Make generations 0..``last_generation`` of the run complete; return the metrics rows."""
    if last_generation < 0:
        raise LmcollapseError(f"generation {last_generation} does not exist: generations count from 0")
    run = RunDir(Path(run_root))
    corpus = CorpusPlan(config)  # located once, here, for preflight and every stage
    preflight(config, run, corpus, last_generation)
    accelerator = make_accelerator(config)
    context = Context(config, run, accelerator, accept_changed, progress, echo, corpus=corpus)
    writable = is_writable(run)
    work = has_work(run, last_generation, len(config.model.entries))
    if not writable and work:
        raise read_only_error(run, last_generation, "generations up to {last} are not all complete")
    created = not run.root.exists()  # before the lock, which creates the folder
    with run_lock(run, enabled=accelerator.is_main_process and writable), stop_on_signals():
        prepare_run(context, created)
        checks = usable_stages(context, last_generation, writable)  # a stale human stage rebuilt
        if work:  # a complete run is not touched again (one made before human/mauve.json existed)
            ensure_human_mauve(context)  # in the run's featurizer space, like every generation's mauve
        build_generations(context, last_generation, checks)
        if context.main and writable:
            refresh_metrics(run, config)  # a deleted or outdated metrics.csv is rebuilt
        rows = collect_rows(run)
    return rows


def prepare_run(context: Context, created: bool) -> None:
    """The run folder with its resolved config, the base (pretrained once if it is a preset) and
    the human data, and the base's zero-shot perplexity. A run this command ``created`` and could
    not prepare is removed."""
    config, run, accelerator = context.config, context.run, context.accelerator
    try:
        if context.main:
            open_run(config, run)
        accelerator.wait_for_everyone()
        for family in context.families():  # one without model.chain; each family's own with it
            prepare_family(context, family)
    except Exception:
        # A run this command created and could not prepare is removed, whatever stopped it: bad
        # input leaves nothing behind, and no pipeline.yaml of a config that cannot run is kept to
        # be reused by the next command (an existing run is never touched here; the pretrained
        # base lives in its cache, not in the run).
        if created and context.main:
            shutil.rmtree(run.root, ignore_errors=True)
        raise
    for family in context.families():
        ensure_base_eval(context.in_family(family))


def prepare_family(context: Context, family) -> None:
    """A model family's base (pretrained once if it is a preset) and its human blocks."""
    pretrained = None
    if family.config.pretrain.enabled and not family.run.base_manifest.is_file():
        pretrained = ensure_pretrained_base(family.config, context.accelerator, context.corpus,
                                            progress=context.progress)
    ensure_base_and_human(context.in_family(family), pretrained)
    context.forget_tokenizer()  # the next tokenizer() reads the saved copy
    if family.position:  # every corpus has the run's N blocks, and each family's regimes draw from its own
        size, own = (read_json(f.human_manifest)["train"]["blocks"] for f in (context.run, family.run))
        if size != own:
            raise LmcollapseError(f"model.chain: {family.name} cuts the human training text into {own} blocks, "
                                  f"{context.config.model.name} into {size}: set data.max_train_blocks={min(size, own)} "
                                  "so every family trains on the same number")


def usable_stages(context: Context, last_generation: int, writable: bool) -> dict[str, StageCheck]:
    """Every stage checked: a stale human stage rebuilt, damage reported before anything is moved
    (a damaged stage does not make the stages built on it stale, and restoring it mends the run),
    stale generations moved aside."""
    run = context.run
    checks = verified_stages(context)
    # Human blocks tokenized by a base model that changed since (a chain's families' too).
    stale_human = {name: checks[name] for name in ["human"] + [f"{f.run.name}-human" for f in context.families()[1:]]
                   if name in checks and checks[name].state == STALE}
    if stale_human:
        first = next(iter(stale_human.values()))
        if not writable:
            raise read_only_error(run, last_generation, f"{first.name} is stale ({first.problem})")
        context.corpus.check_fine_tuning_text()  # the human data can be rebuilt before it is moved aside
        if context.main:
            retire_stale(context, list(stale_human.values()), last_generation)
        for family in context.families():
            prepare_family(context, family)
        checks = verified_stages(context)
    families = [name for name in checks if name.startswith("family-")]
    needed = ["base", "human", *families] + [run.generation(i).name for i in range(last_generation + 1)]
    damaged = [checks[name] for name in needed if name in checks and checks[name].state == DAMAGED]
    if damaged and not context.accept_changed:
        raise LmcollapseError(damaged[0].problem)
    stale = [c for c in checks.values() if c.state == STALE]
    if stale and not writable:
        raise read_only_error(run, last_generation, f"{stale[0].name} is stale ({stale[0].problem})")
    if context.main:
        retire_stale(context, stale, last_generation)
    context.accelerator.wait_for_everyone()
    return checks


def build_generations(context: Context, last_generation: int, checks: dict[str, StageCheck]) -> None:
    """Generations 0..``last_generation``: complete ones skipped, the rest built in order, each row
    printed and logged to the trackers (opened only by a command that builds something)."""
    run, config = context.run, context.config
    tracker, opened = None, False
    try:
        for index in range(last_generation + 1):
            generation = run.generation(index)
            if generation.name in checks and checks[generation.name].state == PENDING:
                checks = settle_pending(context, generation, last_generation)
            if generation.is_complete:
                check = checks[generation.name]
                log.info("%s is complete%s; skipping it", generation.name,
                         "" if check.state == COMPLETE else f" but {check.state}, used as it is (--accept-changed)")
                continue
            # a stop asked for after the last safe point of the generation before (its last evaluation
            # batch) stops here, before this generation's training set is drawn
            check_stop(f"before generation {index}", accelerator=context.accelerator)
            if not opened:
                tracker, opened = RunTracker.open(config, run, context.main), True
            row = build_generation(context, index)
            if context.main:
                refresh_metrics(run, config)
                context.echo(format_table([row]))
                if tracker is not None:
                    steps_before = sum(read_json(run.generation(i).train_log)["steps"] for i in range(index))
                    tracker.log_generation(index, read_json(generation.train_log), row, steps_before)
    finally:
        if tracker is not None:
            tracker.finish()


def settle_pending(context: Context, generation: GenerationDir, last_generation: int) -> dict[str, StageCheck]:
    """Every stage checked again, now that the stage ``generation`` waited for is complete: it is
    used as it is if what it read came out the same, else it (and what was built on it) is moved
    to stale/ and rebuilt."""
    # lineage from the manifests alone; the files of the one kept are hashed below (a pending stage's
    # files were never checked: its lineage was decided first), the others' where they are read
    checks = verified_stages(context, quick=True)
    name = generation.name
    check = checks[name]
    if check.state == PENDING:  # what it waits for is built before it, so this is not expected
        raise LmcollapseError(f"{name} is still {check.state} ({check.problem}): run `status` and report it")
    if check.state == STALE:
        if context.main:
            retire_stale(context, [c for c in checks.values() if c.state == STALE], last_generation)
        context.accelerator.wait_for_everyone()
        return checks
    if check.state == DAMAGED and not context.accept_changed:
        raise LmcollapseError(check.problem)
    if generation.is_complete:
        check_unchanged(recorded_files(read_manifest(generation.manifest)), generation.root, name,
                        context.accept_changed)
    log.info("%s is kept: what it read came out the same, byte for byte", name)
    return checks


def verified_stages(context: Context, quick: bool = False) -> dict:
    """``verify_run`` on the main process, the same answer on every process (no process hashes
    files that the main process may be about to move)."""
    checks = [{c.name: c for c in verify_run(context.run, quick=quick)} if context.main else None]
    if context.accelerator.num_processes > 1:
        broadcast_object_list(checks)
    return checks[0]


def is_writable(run: RunDir) -> bool:
    """Whether this process may write the run folder (or create it)."""
    return os.access(existing_ancestor(run.root), os.W_OK)


def read_only_error(run: RunDir, last_generation: int, why: str) -> LmcollapseError:
    existing = existing_ancestor(run.root)
    if existing != run.root:
        return LmcollapseError(f"{existing} is read-only, so run folder {run.root} cannot be created: "
                               "choose a RUN=... on a writable filesystem")
    root = shlex.quote(str(run.root))
    return LmcollapseError(
        f"run folder {run.root} is read-only and {why.format(last=last_generation)}: make it writable "
        f"(chmod -R u+w {root}) or build a copy: cp -r --no-preserve=mode {root} COPY && "
        f"{build_command(Path('COPY'), last_generation)}")


def has_work(run: RunDir, last_generation: int, families: int = 1) -> bool:
    """Whether building generations 0..last would write anything (the cheap, file-presence view;
    ``families``: how many model families the run has, each with its base and human blocks)."""
    prepared = all(run.family(p).base_eval.is_file() and run.family(p).human_manifest.is_file() for p in range(families))
    return not (prepared and all(run.generation(i).is_complete for i in range(last_generation + 1)))


def retire_stale(context: Context, stale: list, last_generation: int) -> None:
    """Move stages built on a lineage that no longer exists to ``<run>/stale/``, saying so.

    Nothing a stale stage holds can be used (its training data or start came from a stage that
    has changed since), but it is moved, not deleted: the user decides when it goes.
    """
    run = context.run
    if not stale:
        return
    graveyard = run.stale
    graveyard.mkdir(exist_ok=True)
    for check in stale:
        target, copy = graveyard / check.name, 1
        while target.exists():  # an earlier retired copy stays too
            copy += 1
            target = graveyard / f"{check.name}.{copy}"
        os.replace(check.root, target)
    names = ", ".join(c.name for c in stale)
    last_stale = max((int(c.name.removeprefix("generation-")) for c in stale if c.name.startswith("generation-")),
                     default=0)
    rebuilt = "rebuilding them now" if last_stale <= last_generation else \
        f"`{build_command(run.root, last_stale)}` rebuilds them"
    log.warning("%s %s built on a stage that has changed since (%s): moved to %s/; %s", names,
                "was" if len(stale) == 1 else "were", stale[0].problem, graveyard, rebuilt)


def open_run(config: PipelineConfig, run: RunDir) -> None:
    """Create the run with its resolved config, or check that ``config`` is the one it was built with."""
    if run.pipeline_file.is_file():
        check_same_config(config, run)  # again, now under the lock
        return
    if next(recorded_pipeline_digests(run), None):  # a run that lost the file: preflight found this config recorded
        log.info("writing back %s: this config is the one the run's stages recorded", run.pipeline_file)
    write_text_atomic(run.pipeline_file, pipeline_yaml_text(config, run))
