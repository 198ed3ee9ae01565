"""The collapse pipeline, stage by stage: base model, human data, then generations 0..N.

    build(config, Path("runs/tiny"), last_generation=4)   # what `make generation-4` does

Stages, each idempotent and marked complete by a file written last and atomically:

1. ``base``    the starting model and tokenizer: a preset pretrained once (pretrain.py), a preset
               with fresh weights, or a pretrained model; its zero-shot perplexity (base_and_human.py);
2. ``human``   the human train, validation and held-out splits, tokenized and cut into blocks with
               provenance (base_and_human.py);
3. ``generation-k`` for k = 0..N, in order (``build_generation``, one call per stage):
   a. the training set: the regime's (regimes.py), decontaminated if asked (decontaminate.py);
   b. training from ``model.init``'s start, resumable from checkpoints (train.py);
   c. the synthetic corpus: every training block continued by the trained model (generate.py);
   d. evaluation: held-out perplexity, text metrics of the corpus, tails (evaluation.py);
   e. the manifest: fingerprints of everything consumed and produced, timings, the metrics row.

Completed generations are skipped; a stopped one resumes where it stopped. Before a stage
consumes an earlier stage's output it checks the sha256 recorded when that stage completed.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
from accelerate.utils import broadcast_object_list

from lmcollapse.atomic import (
    existing_ancestor,
    read_json,
    remove_path,
    sha256_file,
    sha256_tree,
    write_json_atomic,
    write_text_atomic,
)
from lmcollapse.base_and_human import ensure_base_and_human, ensure_base_eval
from lmcollapse.cards import write_model_card, write_synthetic_card
from lmcollapse.config import PipelineConfig, config_to_yaml
from lmcollapse.context import Context, gpu_memory_peak, make_accelerator
from lmcollapse.decontaminate import decontaminate
from lmcollapse.errors import LmcollapseError
from lmcollapse.evaluation import evaluate_generation, metrics_row
from lmcollapse.generate import write_synthetic_corpus
from lmcollapse.integrity import COMPLETE, DAMAGED, STALE, lineage_record, verify_run
from lmcollapse.interrupts import stop_on_signals
from lmcollapse.manifests import check_unchanged, environment_record, read_manifest, write_manifest
from lmcollapse.modeling import end_of_text_ids, save_model, weights_sha256
from lmcollapse.plan import describe_regime
from lmcollapse.precision import stage_precisions
from lmcollapse.preflight import check_corpus, check_same_config, preflight
from lmcollapse.pretrain import ensure_pretrained_base
from lmcollapse.records import concatenate, read_records, write_records
from lmcollapse.regimes import assemble_training_set, consumed_generations, loss_weights, prompts_for, source_counts
from lmcollapse.rundir import BATCH_PROBE_FILE, MANIFEST, GenerationDir, RunDir, build_command, run_lock
from lmcollapse.tables import collect_rows, format_table, refresh_metrics
from lmcollapse.tracking import RunTracker
from lmcollapse.train import train_model

log = logging.getLogger(__name__)

__all__ = ["Context", "build", "make_accelerator"]


def build(config: PipelineConfig, run_root: Path, last_generation: int, *, accept_changed: bool = False,
          progress: bool = True, echo=print) -> list[dict]:
    """Make generations 0..``last_generation`` of the run complete; return the metrics rows."""
    if last_generation < 0:
        raise LmcollapseError(f"generation {last_generation} does not exist: generations count from 0")
    run = RunDir(Path(run_root))
    preflight(config, run)
    accelerator = make_accelerator(config)
    context = Context(config, run, accelerator, accept_changed, progress, echo)
    created = not run.root.exists()
    writable = is_writable(run)
    if not writable and has_work(run, last_generation):
        raise read_only_error(run, last_generation, "generations up to {last} are not all complete")
    with run_lock(run, enabled=accelerator.is_main_process and writable), stop_on_signals():
        try:
            if context.main:
                open_run(config, run)
            accelerator.wait_for_everyone()
            pretrained = None
            if config.pretrain.enabled and not run.base_manifest.is_file():
                pretrained = ensure_pretrained_base(config, accelerator, progress=progress)
            ensure_base_and_human(context, pretrained)
        except LmcollapseError:
            # A run this command created and could not prepare is removed: bad input leaves
            # nothing behind (an existing run is never touched here).
            if created and context.main:
                shutil.rmtree(run.root, ignore_errors=True)
            raise
        ensure_base_eval(context)
        checks = verified_stages(context)
        if checks["human"].state == STALE:  # tokenized by a base model that changed since
            if not writable:
                raise read_only_error(run, last_generation, f"human is stale ({checks['human'].problem})")
            check_corpus(config)  # the human data can be rebuilt before it is moved aside
            if context.main:
                retire_stale(context, [checks["human"]], last_generation)
            ensure_base_and_human(context)
            checks = verified_stages(context)
        # Damage is reported before anything is moved: a damaged stage does not make the stages
        # built on it stale, and restoring it mends the run.
        needed = ["base", "human"] + [run.generation(i).name for i in range(last_generation + 1)]
        damaged = [checks[name] for name in needed if name in checks and checks[name].state == DAMAGED]
        if damaged and not accept_changed:
            raise LmcollapseError(damaged[0].problem)
        stale = [c for c in checks.values() if c.state == STALE]
        if stale and not writable:
            raise read_only_error(run, last_generation, f"{stale[0].name} is stale ({stale[0].problem})")
        if context.main:
            retire_stale(context, stale, last_generation)
        accelerator.wait_for_everyone()
        tracker, opened = None, False
        try:
            for index in range(last_generation + 1):
                generation = run.generation(index)
                if generation.is_complete:
                    check = checks[generation.name]
                    log.info("%s is complete%s; skipping it", generation.name,
                             "" if check.state == COMPLETE else f" but {check.state}, used as it is (--accept-changed)")
                    continue
                if not opened:  # only a command that builds something logs (and opens the trackers)
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
        if context.main and writable:
            refresh_metrics(run, config)  # a deleted or outdated metrics.csv is rebuilt
        rows = collect_rows(run)
    return rows


def verified_stages(context: Context) -> dict:
    """``verify_run`` on the main process, the same answer on every process (no process hashes
    files that the main process may be about to move)."""
    checks = [{c.name: c for c in verify_run(context.run)} if context.main else None]
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


def has_work(run: RunDir, last_generation: int) -> bool:
    """Whether building generations 0..last would write anything (the cheap, file-presence view)."""
    return not (run.base_eval.is_file() and run.human_manifest.is_file()
                and all(run.generation(i).is_complete for i in range(last_generation + 1)))


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
    header = (f"# Resolved config of run {run.name}, exactly as used. Rebuild or extend it with:\n"
              f"#   {build_command(run.root, config.generations - 1)}\n")
    write_text_atomic(run.pipeline_file, header + config_to_yaml(config))


def build_generation(context: Context, index: int) -> dict:
    """Generation ``index``, stage by stage; a stage already done is read back, not redone."""
    generation = context.run.generation(index)
    consumed = verify_inputs(context, index)
    mark_lineage(context, index)
    train_set, train_sha = ensure_training_set(context, index)
    memory: dict[str, float] = {}  # on a GPU: each stage's peak, as this invocation ran it
    with gpu_memory_peak(memory, "train_gpu_peak_gb"):
        model, train_log = ensure_trained_model(context, index, train_set, train_sha)
    with gpu_memory_peak(memory, "generate_gpu_peak_gb"):
        shards = ensure_synthetic_corpus(context, index, model, train_set)
    with gpu_memory_peak(memory, "eval_gpu_peak_gb"):
        results = evaluate_generation(context, index, model, read_synthetic(generation))
    timings = {"train_seconds": train_log["seconds"], "generate_seconds": sum(s["seconds"] for s in shards),
               "eval_seconds": sum(result["seconds"] for result in results.values()), **memory}
    row = metrics_row(context.config, index, train_set, train_log, shards, results, timings, generation.decontamination)
    write_cards(context, index, train_set, shards, row)
    write_generation_manifest(context, index, consumed, train_sha, timings, row)
    return row


def write_cards(context: Context, index: int, train_set, shards: list[dict], row: dict) -> None:
    """The synthetic corpus's dataset card and the model's card, before the manifest records them."""
    run, config = context.run, context.config
    generation = run.generation(index)
    if context.main:
        regime = describe_regime(config)
        write_synthetic_card(config, generation.synthetic, index, weights_sha256(generation.model),
                             sum(s["records"] for s in shards), regime, row)
        start = start_model(run, config, index)
        counts = ", ".join(f"{n} {source}" for source, n in source_counts(train_set).items())
        write_model_card(config, generation.model, index,
                         f"`{start.relative_to(run.root).as_posix()}` (weights sha256 `{weights_sha256(start)}`)",
                         f"{len(train_set)} blocks of {config.data.block_size} tokens ({counts})", regime, row)
    context.accelerator.wait_for_everyone()


def mark_lineage(context: Context, index: int) -> None:
    """Record what the generation is built on before anything else: a partial generation whose
    parent changes later is then known to be stale (integrity.verify_run), never finished on the
    old lineage."""
    generation = context.run.generation(index)
    if context.main and not generation.lineage.is_file():
        write_manifest(generation.lineage, lineage_record(context.run, index))
    context.accelerator.wait_for_everyone()


def ensure_training_set(context: Context, index: int):
    """The regime's training set (decontaminated if asked), and its sha256."""
    run, config = context.run, context.config
    generation = run.generation(index)
    if context.main and not generation.train_set.is_file():
        human_train = read_records(run.human_train)
        candidates = assemble_training_set(config, index, human_train, lambda g: read_synthetic(run.generation(g)))
        if config.decontaminate.enabled and index > 0:
            candidates = filter_candidates(context, index, candidates)
        write_records(candidates, generation.train_set)
    context.accelerator.wait_for_everyone()
    return read_records(generation.train_set), sha256_file(generation.train_set)


def ensure_trained_model(context: Context, index: int, train_set, train_sha: str):
    """The generation's trained model (on the accelerator's device) and its train log: trained
    from ``model.init``'s start, resumed from the last checkpoint, or read back when saved."""
    run, config, accelerator = context.run, context.config, context.accelerator
    generation = run.generation(index)
    if generation.model.is_dir():
        model = context.load_weights(generation.model)
        return model.to(accelerator.device), read_json(generation.train_log)
    tokenizer = context.tokenizer()
    start = start_model(run, config, index)
    start_sha = weights_sha256(start)
    model = context.load_weights(start)
    validation = None
    if config.train.select == "best-validation":
        validation = [np.asarray(ids, dtype=np.int64) for ids in read_records(run.human_validation)["input_ids"]]
    sources = source_counts(train_set)
    context.say(f"{generation.name}: training on {len(train_set)} blocks "
                f"({', '.join(f'{v} {k}' for k, v in sorted(sources.items()))}) from {start.relative_to(run.root)}")
    sequences = [np.asarray(ids, dtype=np.int64) for ids in train_set["input_ids"]]
    model, outcome = train_model(
        model, sequences, config.train, seed=config.seed, generation=index,
        checkpoint_dir=generation.checkpoints, accelerator=accelerator, data_fingerprint=train_sha,
        pad_id=tokenizer.pad_token_id, weights=loss_weights(config, train_set), progress=context.progress,
        validation=validation)
    train_log = {"steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds,
                 "final_loss": outcome.final_loss, "resumed_from_step": outcome.resumed_from_step,
                 "started_from": str(start.relative_to(run.root)), "started_from_sha256": start_sha,
                 "selection": outcome.selection, "log": outcome.log}
    if context.main:
        save_model(model, tokenizer, generation.model, {generation.train_log.name: json.dumps(train_log, indent=1)})
        remove_path(generation.checkpoints)
    accelerator.wait_for_everyone()
    return model.to(accelerator.device), train_log


def ensure_synthetic_corpus(context: Context, index: int, model, train_set) -> list[dict]:
    """The generation's synthetic corpus (its shards' sidecars), written shard by shard."""
    run, config = context.run, context.config
    generation = run.generation(index)
    corpus_size = read_manifest(run.human_manifest)["train"]["blocks"]
    human_prompts = read_records(run.human_train) if config.generate.prompts == "human" else None
    # The writer is named by content (its weights' sha256), never by the folder it sits in: two
    # runs of one config in differently named folders write byte-identical shards.
    return write_synthetic_corpus(
        model, context.tokenizer(), prompts_for(config, index, train_set, corpus_size, human_prompts), config.generate,
        seed=config.seed, generation=index, model_label=f"sha256:{weights_sha256(generation.model)}",
        out_dir=generation.synthetic, accelerator=context.accelerator, progress=context.progress)


def write_generation_manifest(context: Context, index: int, consumed: dict, train_sha: str, timings: dict,
                              row: dict) -> None:
    """The manifest, last: what the generation consumed and produced (sha256), and its row."""
    run, config = context.run, context.config
    generation = run.generation(index)
    if context.main:
        outputs = {name: digest for name, digest in sha256_tree(generation.root).items()
                   if not name.startswith(("checkpoints/", ".")) and name != MANIFEST}
        write_manifest(generation.manifest, {
            "generation": index, "run": run.name, "config_fingerprint": config.fingerprint(), "seed": config.seed,
            **lineage_record(run, index), "consumed": consumed, "mixed_precision": stage_precisions(config),
            "processes": context.accelerator.num_processes, "generate_batch_size": generate_batch_size(context, index),
            "train_set_sha256": train_sha, "outputs": outputs, "timings": timings,
            "metrics": row, **environment_record()})
    context.accelerator.wait_for_everyone()


def generate_batch_size(context: Context, index: int) -> int:
    """The batch the corpus was generated in: generate.batch_probe's choice where it probed; never
    more than a shard (a batch never spans two)."""
    probe = context.run.generation(index).synthetic / BATCH_PROBE_FILE
    chosen = int(read_json(probe)["batch_size"]) if probe.is_file() else context.config.generate.batch_size
    return min(chosen, context.config.generate.shard_size)


def start_model(run: RunDir, config: PipelineConfig, index: int) -> Path:
    """The weights generation ``index`` starts training from (``model.init``)."""
    if index == 0 or config.model.init == "base":
        return run.base_model
    return run.generation(0 if config.model.init == "generation-0" else index - 1).model


def filter_candidates(context: Context, index: int, candidates):
    """Decontamination: the detector's report is written before the training set it filtered."""
    scorer = None
    if context.config.decontaminate.detector == "perplexity":
        scorer = context.load_weights(context.run.generation(index - 1).model)
    kept, report = decontaminate(candidates, context.config, index, scorer, context.config.evaluate.batch_size,
                                 end_of_text_ids=end_of_text_ids(context.tokenizer()))
    write_json_atomic(context.run.generation(index).decontamination, report)
    return kept


def verify_inputs(context: Context, index: int) -> dict[str, str]:
    """Check every earlier artefact this generation consumes against its recorded sha256."""
    run, config, accept = context.run, context.config, context.accept_changed
    consumed: dict[str, str] = {}

    def check(recorded: dict[str, str], root: Path, what: str, prefix: str, stage_root: Path | None = None) -> None:
        changed = set(check_unchanged(recorded, root, what, accept, stage_root))  # hashes every file once
        for name, digest in recorded.items():
            path = root / name
            if name in changed:  # used as it is now (--accept-changed): record what it is now
                digest = sha256_file(path) if path.is_file() else "missing"
            consumed[f"{prefix}{name}"] = digest

    base = read_manifest(run.base_manifest)
    human = read_manifest(run.human_manifest)
    check(human["files"], run.human, "the human-data stage", "human/")
    if index == 0 or config.model.init == "base":
        check(base["files"], run.base_model, "the base stage", "base/model/", run.base)
    if index > 0:
        # Everything the previous generation recorded: its corpus is this one's training data,
        # its model this one's start (init=previous), its numbers part of the same table.
        previous = run.generation(index - 1)
        check(read_manifest(previous.manifest)["outputs"], previous.root, previous.name, f"{previous.name}/")
        for earlier in consumed_generations(config, index)[:-1]:  # accumulating regimes read them all
            older = run.generation(earlier)
            recorded = read_manifest(older.manifest)["outputs"]
            check({k: v for k, v in recorded.items() if k.startswith("synthetic/")}, older.root, older.name, f"{older.name}/")
        first = run.generation(0)
        # Generation 0's model scores the tails, and with init=generation-0 every later one starts from it.
        if index > 1 and (config.evaluate.tails or config.model.init == "generation-0"):
            recorded = read_manifest(first.manifest)["outputs"]
            check({k: v for k, v in recorded.items() if k.startswith("model/")}, first.root, first.name, f"{first.name}/")
    return consumed


def read_synthetic(generation: GenerationDir):
    shards = generation.synthetic_shards()
    if not shards:
        raise LmcollapseError(f"{generation.root} has no synthetic corpus: delete the folder to rebuild the generation")
    return concatenate([read_records(path) for path in shards])
