"""The collapse pipeline, stage by stage: base model, human data, then generations 0..N.

    build(config, Path("runs/tiny"), last_generation=4)   # what `make generation-4` does

Stages, each idempotent and marked complete by a file written last and atomically:

1. ``base``    the starting model and tokenizer (a preset built from config with a BPE tokenizer
               trained on the human train split, or a pretrained model), saved in the run;
2. ``human``   the human train and held-out splits, tokenized and cut into blocks with provenance;
3. ``generation-k`` for k = 0..N, in order:
   a. the training set (regimes.py): human blocks for k = 0, then the previous corpus;
   b. training from the base model (or the previous one), resumable from checkpoints;
   c. the synthetic corpus: every training block continued by the trained model;
   d. evaluation: held-out perplexity (blocks, sliding window), text metrics of the corpus,
      tails (the corpus scored by the generation-0 model);
   e. the manifest: fingerprints of everything consumed and produced, timings, the metrics row.

Completed generations are skipped; a stopped one resumes where it stopped. Before a stage
consumes an earlier stage's output it checks the sha256 recorded when that stage completed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmcollapse import corpus
from lmcollapse.atomic import (
    existing_ancestor,
    read_json,
    remove_path,
    sha256_file,
    sha256_tree,
    write_json_atomic,
    write_text_atomic,
)
from lmcollapse.config import PipelineConfig, config_to_yaml, load_config, result_affecting_differences
from lmcollapse.errors import LmcollapseError
from lmcollapse.generate import write_synthetic_corpus
from lmcollapse.integrity import COMPLETE, DAMAGED, STALE, lineage_record, verify_run
from lmcollapse.interrupts import stop_on_signals
from lmcollapse.metrics import REGISTRY, TAIL_QUANTILES
from lmcollapse.metrics.distinct import distinct_n, distinct_n_li, distinct_n_per_sample, rare_ngram_survival
from lmcollapse.metrics.ngrams import EncodedCorpus
from lmcollapse.metrics.perplexity import TokenStream, perplexity_blocks, perplexity_sliding, sample_perplexities
from lmcollapse.metrics.self_bleu import self_bleu_scores, subsample_indices
from lmcollapse.modeling import end_of_text_ids
from lmcollapse.precision import stage_precisions
from lmcollapse.records import HUMAN, concatenate, make_records, read_records, write_records
from lmcollapse.regimes import assemble_training_set, consumed_generations, loss_weights, prompts_for, source_counts
from lmcollapse.rundir import (
    MANIFEST,
    GenerationDir,
    RunDir,
    build_command,
    check_unchanged,
    environment_record,
    read_manifest,
    run_lock,
    write_manifest,
)
from lmcollapse.seeding import derive_seed
from lmcollapse.seeding import rng as derive_rng
from lmcollapse.tables import format_table, write_metrics
from lmcollapse.train import train_model

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Everything a stage needs: the config, the run directory, the accelerator, the options."""

    config: PipelineConfig
    run: RunDir
    accelerator: object
    accept_changed: bool = False
    progress: bool = True
    echo: object = print
    _tokenizer: object = field(default=None, repr=False)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, text: str) -> None:
        """A progress line (stderr, silenced by -q); results go to ``echo``."""
        if self.main:
            log.info(text)


def make_accelerator(config: PipelineConfig):
    """An ``Accelerator`` for the configured precision on whatever devices exist."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise LmcollapseError("train.mixed_precision=fp16 needs a GPU: use bf16 or no on a CPU")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # One process: forget any accelerator an earlier build in this process configured.
        AcceleratorState._reset_state(reset_partial_state=True)
    # Without a GPU, say so: accelerate then runs several processes (accelerate launch --multi_gpu,
    # torchrun) on the CPU with gloo, instead of falling back to a single process.
    xpu = getattr(torch, "xpu", None)
    cpu_only = not (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                    or torch.backends.mps.is_available())
    # The scheduler is stepped once per optimizer step by the training loop itself;
    # accelerate's default would step it once per process.
    return Accelerator(mixed_precision=config.train.mixed_precision, step_scheduler_with_optimizer=False,
                       cpu=cpu_only, dynamo_backend="inductor" if config.train.compile else "no")


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
                from lmcollapse.pretrain import ensure_pretrained_base

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
        for index in range(last_generation + 1):
            generation = run.generation(index)
            if generation.is_complete:
                check = checks[generation.name]
                log.info("%s is complete%s; skipping it", generation.name,
                         "" if check.state == COMPLETE else f" but {check.state}, used as it is (--accept-changed)")
                continue
            row = build_generation(context, index)
            if context.main:
                refresh_metrics(run, config)
                context.echo(format_table([row]))
        if context.main and writable:
            refresh_metrics(run, config)  # a deleted or outdated metrics.csv is rebuilt
        rows = collect_rows(run)
    return rows


def verified_stages(context: Context) -> dict:
    """``verify_run`` on the main process, the same answer on every process (no process hashes
    files that the main process may be about to move)."""
    from accelerate.utils import broadcast_object_list

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


def preflight(config: PipelineConfig, run: RunDir) -> None:
    """Cheap checks before anything is created: the run folder, the config it was built with, and
    the inputs the stages still to do will read (the corpus and model folder, until they are in)."""
    from lmcollapse.modeling import check_model_folder

    existing = existing_ancestor(run.root)
    if not existing.is_dir():
        where = "is a file" if existing == run.root else f"is inside {existing}, which is a file"
        raise LmcollapseError(f"RUN={run.root} {where}, not a run folder: choose a folder, e.g. RUN=runs/{config.name}")
    if run.pipeline_file.is_file():
        check_same_config(config, run)
    elif run.root.is_dir():
        strangers = [p.name for p in run.root.iterdir() if p.name != ".lock"]
        if strangers:
            raise LmcollapseError(
                f"{run.root} is not empty and holds no pipeline.yaml (it has {', '.join(sorted(strangers)[:4])}): "
                "choose a new RUN=... for this pipeline")
    if not run.human_manifest.is_file():
        check_corpus(config)
    if not run.base_manifest.is_file() and not config.model.is_preset and Path(config.model.name).expanduser().exists():
        folder = Path(config.model.name).expanduser()
        check_model_folder(folder)
        check_positions_of(config, read_json(folder / "config.json"))
    if run.base_manifest.is_file() and config.pretrain.enabled:
        if read_manifest(run.base_manifest).get("kind") == "preset":  # an older run's fresh-weights base
            raise LmcollapseError(
                f"run {run.root} has a base trained from scratch (made by an older lmcollapse), but this config "
                f"pretrains it (pretrain.corpus={config.pretrain.corpus}): choose a new RUN=... for this config")
    if config.pretrain.enabled and not run.base_manifest.is_file():
        check_pretraining_text(config)


def check_pretraining_text(config: PipelineConfig) -> None:
    """The pretraining split is readable and shares no text with the fine-tuning, held-out or
    validation text (by release family and split for named corpora, by file content otherwise)."""
    (source,) = corpus.locate_splits(config.pretrain.corpus, config.pretrain.split)
    for path in source.files:
        corpus.check_text_file(path)
    data = config.data
    roles = [("data.train_split", data.train_split), ("data.heldout_split", data.heldout_split)]
    if separate_validation_split(config):
        roles.append(("data.validation_split", separate_validation_split(config)))
    for key, split in roles:
        (other,) = corpus.locate_splits(data.corpus, split)
        if corpus.same_text(source, other):
            raise LmcollapseError(
                f"pretrain.split: the {config.pretrain.split} split of {config.pretrain.corpus} holds the same text as "
                f"{key} ({split} of {data.corpus}): pretrain on other articles (WikiText-2's default: "
                "pretrain.split=train with data.train_split=validation and data.heldout_split=test)")


def check_positions_of(config: PipelineConfig, model_config: dict) -> None:
    """A pretrained model's position limit bounds prompt + new tokens and the evaluation windows."""
    from lmcollapse.config import check_trained_positions

    positions = model_config.get("max_position_embeddings") or model_config.get("n_positions")
    if positions:
        check_trained_positions(config, int(positions), f"max_position_embeddings of {config.model.name}")


def separate_validation_split(config: PipelineConfig) -> str | None:
    """The split validation blocks come from when it is not the train split (best-validation only)."""
    split = config.data.validation_split
    if config.train.select != "best-validation" or split in (None, config.data.train_split):
        return None
    return split


def check_corpus(config: PipelineConfig) -> None:
    """The train and held-out splits are found, in one place, and readable (not yet loaded)."""
    sources = corpus.locate_splits(config.data.corpus, config.data.train_split, config.data.heldout_split)
    corpus.check_same_source(*sources, allow_mixed=config.data.mixed_sources)
    if separate_validation_split(config):
        (validation,) = corpus.locate_splits(config.data.corpus, separate_validation_split(config))
        corpus.check_same_source(sources[0], validation, allow_mixed=config.data.mixed_sources)
        sources = (*sources, validation)
    for source in sources:
        for path in source.files:
            corpus.check_text_file(path)


def check_same_config(config: PipelineConfig, run: RunDir) -> None:
    recorded = load_config(run.pipeline_file)
    differences = result_affecting_differences(recorded, config)
    if differences:
        shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise LmcollapseError(
            f"run {run.root} was built from a different config ({shown}{more}): choose a new RUN=... for "
            f"these settings, or go on with the run's own: {build_command(run.root, config.generations - 1)}")


# ---------------------------------------------------------------------------- the run directory

def open_run(config: PipelineConfig, run: RunDir) -> None:
    """Create the run with its resolved config, or check that ``config`` is the one it was built with."""
    if run.pipeline_file.is_file():
        check_same_config(config, run)  # again, now under the lock
        return
    header = (f"# Resolved config of run {run.name}, exactly as used. Rebuild or extend it with:\n"
              f"#   {build_command(run.root, config.generations - 1)}\n")
    write_text_atomic(run.pipeline_file, header + config_to_yaml(config))


# ---------------------------------------------------------------------------- base model and human data

def ensure_base_and_human(context: Context, pretrained=None) -> None:
    """The base model and tokenizer, then the human blocks, each with its manifest.

    Everything is computed and checked (corpus readable, at least one block per split) before
    the first file is written, so bad input fails without leaving a half-made stage.
    """
    run, config = context.run, context.config
    base_done, human_done = run.base_manifest.is_file(), run.human_manifest.is_file()
    if (base_done and human_done) or not context.main:
        context.accelerator.wait_for_everyone()
        return
    from lmcollapse.modeling import build_preset_model, count_parameters, load_model, save_model, train_bpe_tokenizer

    started = time.perf_counter()
    data = config.data
    train_source, heldout_source = corpus.locate_splits(data.corpus, data.train_split, data.heldout_split)
    corpus.check_same_source(train_source, heldout_source, allow_mixed=data.mixed_sources)
    train_lines = corpus.load_split_lines(train_source)
    heldout_lines = corpus.load_split_lines(heldout_source)
    model = None
    if base_done:
        tokenizer = tokenizer_of(context)
    elif pretrained is not None:
        from transformers import AutoTokenizer

        from lmcollapse.modeling import prepare_tokenizer

        context.say(f"base: the pretrained {config.model.name} from the cache ({pretrained.root})")
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(pretrained.model))
    elif config.model.is_preset:
        shape = config.model.architecture()  # model.vocab_size and model.max_positions applied
        context.say(f"base: training a {shape['vocab_size']}-token byte-level BPE tokenizer on {train_source.describe()}")
        tokenizer = train_bpe_tokenizer(train_lines["text"], int(shape["vocab_size"]), int(shape["max_position_embeddings"]))
    else:
        context.say(f"base: loading {config.model.name} with from_pretrained")
        model, tokenizer = load_model(config.model.name, config.model.attn_implementation)
        check_positions_of(config, model.config.to_dict())

    train_stream = corpus.tokenize_lines(train_lines, tokenizer)
    heldout_stream = corpus.tokenize_lines(heldout_lines, tokenizer)
    train_blocks = corpus.cut_into_blocks(train_stream, data.block_size, f"{data.train_split} split")
    heldout_blocks = corpus.cut_into_blocks(heldout_stream, config.eval_block_size, f"{data.heldout_split} split")

    if not base_done and pretrained is not None:
        from lmcollapse.atomic import atomic_path
        from lmcollapse.pretrain import check_entry

        entry = check_entry(pretrained)
        with atomic_path(run.base_model) as scratch:  # the run keeps its own copy, byte for byte
            shutil.copytree(pretrained.model, scratch)
        write_manifest(run.base_manifest, {
            "kind": "pretrained-preset", "source": config.model.name, "parameters": entry["parameters"],
            "vocab_size": entry["vocab_size"], "tokenizer_trained_on": entry["corpus_sha256"],
            "pretrained": {"cache_entry": str(pretrained.root), "key": pretrained.key,
                           "entry_manifest_sha256": entry["manifest_sha256"], "corpus": entry["corpus"],
                           "blocks": entry["blocks"], "block_size": entry["block_size"], "steps": entry["steps"],
                           "tokens": entry["tokens"], "final_loss": entry["final_loss"], "seconds": entry["seconds"]},
            "files": sha256_tree(run.base_model), "seconds": time.perf_counter() - started, **environment_record()})
        context._tokenizer = None
    elif not base_done:
        if model is None:
            model = build_preset_model(config.model, tokenizer, seed=derive_seed(config.seed, "init"))
        save_model(model, tokenizer, run.base_model)
        write_manifest(run.base_manifest, {
            "kind": "preset" if config.model.is_preset else "pretrained", "source": config.model.name,
            "parameters": count_parameters(model), "vocab_size": len(tokenizer),
            "tokenizer_trained_on": {str(p): sha256_file(p) for p in train_source.files} if config.model.is_preset else None,
            "files": sha256_tree(run.base_model), "seconds": time.perf_counter() - started, **environment_record()})
        context._tokenizer = None  # reload the saved one: what every later stage uses

    kept = np.arange(len(train_blocks))
    if data.max_train_blocks is not None and data.max_train_blocks < len(train_blocks):
        kept = subsample_indices(len(train_blocks), data.max_train_blocks, data.subset_seed)
    if data.max_heldout_blocks is not None:
        heldout_blocks = heldout_blocks[: data.max_heldout_blocks]
    tokenizer = tokenizer_of(context)
    train = _human_records(tokenizer, train_blocks[kept], kept, data.train_split)
    heldout = _human_records(tokenizer, heldout_blocks, np.arange(len(heldout_blocks)), data.heldout_split)
    validation, validation_record = validation_records(context, tokenizer, train_blocks, kept)
    run.human.mkdir(parents=True, exist_ok=True)
    write_records(train, run.human_train)
    write_records(heldout, run.human_heldout)
    if validation is not None:
        write_records(validation, run.human_validation)
    context.say(f"human: {len(train)} training blocks of {data.block_size} tokens "
                f"(of {len(train_blocks)}), {len(heldout)} held-out blocks of {config.eval_block_size}")
    write_manifest(run.human_manifest, {
        **lineage_record(run, None),
        "train": {"split": data.train_split, "source": train_source.describe(), "provenance": train_source.record(),
                  "blocks": len(train),
                  "blocks_in_split": len(train_blocks), "tokens_in_split": int(len(train_stream)),
                  "corpus_sha256": {str(p): sha256_file(p) for p in train_source.files}},
        "heldout": {"split": data.heldout_split, "source": heldout_source.describe(),
                    "provenance": heldout_source.record(), "blocks": len(heldout),
                    "tokens_in_split": int(len(heldout_stream)),
                    "corpus_sha256": {str(p): sha256_file(p) for p in heldout_source.files}},
        **({"validation": validation_record} if validation is not None else {}),
        "files": {path.name: sha256_file(path) for path in (run.human_train, run.human_heldout, run.human_validation)
                  if path != run.human_validation or validation is not None},
        "text_metrics": corpus_text_metrics(config, train["text"]), "seconds": time.perf_counter() - started})
    context.accelerator.wait_for_everyone()


def validation_records(context: Context, tokenizer, train_blocks: np.ndarray, kept: np.ndarray):
    """The human validation blocks of ``train.select=best-validation`` (None without it): disjoint
    from the training blocks and the held-out split, by construction."""
    config, data = context.config, context.config.data
    if config.train.select != "best-validation":
        return None, None
    split = separate_validation_split(config)
    if split is None:  # carved from the train split: its blocks outside the training subset
        pool = np.setdiff1d(np.arange(len(train_blocks)), kept)
        if len(pool) == 0:
            raise LmcollapseError(
                f"train.select=best-validation needs validation blocks, but all {len(train_blocks)} blocks of the "
                f"{data.train_split} split are training blocks: set data.max_train_blocks below {len(train_blocks)} "
                "or data.validation_split=<another split>")
        blocks, source = train_blocks, f"{data.train_split} split, blocks outside the training subset"
        files = None  # the train split's files, recorded under "train"
    else:
        (located,) = corpus.locate_splits(data.corpus, split)
        stream = corpus.tokenize_lines(corpus.load_split_lines(located), tokenizer)
        blocks, source = corpus.cut_into_blocks(stream, data.block_size, f"{split} split"), located.describe()
        pool = np.arange(len(blocks))
        files = {str(p): sha256_file(p) for p in located.files}
    if data.max_validation_blocks is not None and data.max_validation_blocks < len(pool):
        pool = np.sort(derive_rng(data.subset_seed, "validation").permutation(pool)[:data.max_validation_blocks])
    records = _human_records(tokenizer, blocks[pool], pool, split or data.train_split)
    context.say(f"human: {len(records)} validation blocks ({source})")
    return records, {"split": split or data.train_split, "source": source, "blocks": len(records),
                     "carved_from_train_split": split is None, **({"corpus_sha256": files} if files else {})}


def tokenizer_of(context: Context):
    if context._tokenizer is None:
        from transformers import AutoTokenizer

        from lmcollapse.modeling import prepare_tokenizer

        context._tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(context.run.base_model))
    return context._tokenizer


def _human_records(tokenizer, blocks: np.ndarray, indices: np.ndarray, split: str):
    count = len(blocks)
    return make_records({
        "id": [f"{HUMAN}-{split}-{i:06d}" for i in indices], "source": [HUMAN] * count,
        "generation": [None] * count, "parent": [None] * count, "model": [None] * count,
        "input_ids": blocks.astype(np.int32).tolist(),
        "text": tokenizer.batch_decode(blocks.tolist(), skip_special_tokens=True),
    })


def ensure_base_eval(context: Context) -> None:
    """Zero-shot perplexity of the base model: the paper's 'about 115' reference point."""
    path = context.run.base_eval
    if path.is_file():
        return
    from lmcollapse.modeling import load_model

    model, _ = load_model(context.run.base_model, context.config.model.attn_implementation, with_tokenizer=False)
    model = model.to(context.accelerator.device)
    result = heldout_perplexity(context, model, "base model")
    if context.main:
        write_manifest(path, result | {"mixed_precision": context.config.evaluate.mixed_precision})
    context.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------- one generation

def build_generation(context: Context, index: int) -> dict:
    run, config, accelerator = context.run, context.config, context.accelerator
    generation = run.generation(index)
    consumed = verify_inputs(context, index)
    if context.main and not generation.lineage.is_file():
        # NOTE: first, before the training set: a partial generation whose parent changes later
        # is then known to be stale (integrity.verify_run), never finished on the old lineage.
        write_manifest(generation.lineage, lineage_record(run, index))
    accelerator.wait_for_everyone()
    timings: dict[str, float] = {}
    tokenizer = tokenizer_of(context)

    # a. the training set (the regime's, then decontaminated if asked)
    if context.main and not generation.train_set.is_file():
        human_train = read_records(run.human_train)
        candidates = assemble_training_set(config, index, human_train, lambda g: read_synthetic(run.generation(g)))
        if config.decontaminate.enabled and index > 0:
            candidates = filter_candidates(context, index, candidates)
        write_records(candidates, generation.train_set)
    accelerator.wait_for_everyone()
    train_set = read_records(generation.train_set)
    train_sha = sha256_file(generation.train_set)
    sources = source_counts(train_set)
    corpus_size = read_manifest(run.human_manifest)["train"]["blocks"]

    # b. training
    from lmcollapse.modeling import load_model, save_model, weights_sha256

    if generation.model.is_dir():
        model, _ = load_model(generation.model, config.model.attn_implementation, with_tokenizer=False)
        train_log = read_json(generation.train_log)
    else:
        start = start_model(run, config, index)
        start_sha = weights_sha256(start)
        model, _ = load_model(start, config.model.attn_implementation, with_tokenizer=False)
        validation = None
        if config.train.select == "best-validation":
            validation = [np.asarray(ids, dtype=np.int64)
                          for ids in read_records(run.human_validation)["input_ids"]]
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
    model = model.to(accelerator.device)
    timings["train_seconds"] = train_log["seconds"]

    # c. the synthetic corpus
    # The writer is named by content (its weights' sha256), never by the folder it sits in: two
    # runs of one config in differently named folders write byte-identical shards.
    human_prompts = read_records(run.human_train) if config.generate.prompts == "human" else None
    shards = write_synthetic_corpus(
        model, tokenizer, prompts_for(config, index, train_set, corpus_size, human_prompts), config.generate,
        seed=config.seed,
        generation=index, model_label=f"sha256:{weights_sha256(generation.model)}", out_dir=generation.synthetic,
        accelerator=accelerator, progress=context.progress)
    timings["generate_seconds"] = sum(s["seconds"] for s in shards)
    synthetic = read_synthetic(generation)

    # d. evaluation
    perplexities = ensure_json(context, generation.perplexity,
                               lambda: heldout_perplexity(context, model, generation.name, generation.heldout_block_nll))
    text_metrics = ensure_json(context, generation.text_metrics,
                               lambda: synthetic_text_metrics(context, synthetic))
    tails = ensure_json(context, generation.tails,
                        lambda: synthetic_tails(context, index, model, synthetic, generation.tails_values))
    timings["eval_seconds"] = perplexities["seconds"] + text_metrics["seconds"] + tails["seconds"]

    # e. the manifest, last
    row = metrics_row(config, index, train_set, sources, train_log, shards, perplexities, text_metrics, tails, timings)
    if generation.decontamination.is_file():
        report = read_json(generation.decontamination)
        cue_free = report.get("without_end_of_text_cue", {})
        row.update(decontam_precision=report["precision"], decontam_recall=report["recall"],
                   decontam_dropped=report["candidates"] - report["kept"],
                   decontam_precision_no_eos=cue_free.get("precision"), decontam_recall_no_eos=cue_free.get("recall"))
    if context.main:
        outputs = {name: digest for name, digest in sha256_tree(generation.root).items()
                   if not name.startswith(("checkpoints/", ".")) and name != MANIFEST}
        write_manifest(generation.manifest, {
            "generation": index, "run": run.name, "config_fingerprint": config.fingerprint(), "seed": config.seed,
            **lineage_record(run, index), "consumed": consumed, "mixed_precision": stage_precisions(config),
            "processes": accelerator.num_processes,
            "train_set_sha256": train_sha, "outputs": outputs, "timings": timings,
            "metrics": row, **environment_record()})
    accelerator.wait_for_everyone()
    return row


def start_model(run: RunDir, config: PipelineConfig, index: int) -> Path:
    """The weights generation ``index`` starts training from (``model.init``)."""
    if index == 0 or config.model.init == "base":
        return run.base_model
    return run.generation(0 if config.model.init == "generation-0" else index - 1).model


def filter_candidates(context: Context, index: int, candidates):
    """Decontamination: the detector's report is written before the training set it filtered."""
    from lmcollapse.decontaminate import decontaminate

    scorer = None
    if context.config.decontaminate.detector == "perplexity":
        from lmcollapse.modeling import load_model

        scorer, _ = load_model(context.run.generation(index - 1).model, context.config.model.attn_implementation,
                               with_tokenizer=False)
    kept, report = decontaminate(candidates, context.config, index, scorer, context.config.evaluate.batch_size,
                                 end_of_text_ids=end_of_text_ids(tokenizer_of(context)))
    write_json_atomic(context.run.generation(index).decontamination, report)
    return kept


def verify_inputs(context: Context, index: int) -> dict[str, str]:
    """Check every earlier artefact this generation consumes against its recorded sha256."""
    run, config, accept = context.run, context.config, context.accept_changed
    consumed: dict[str, str] = {}

    def check(recorded: dict[str, str], root: Path, what: str, prefix: str, stage_root: Path | None = None) -> None:
        check_unchanged(recorded, root, what, accept, stage_root)
        for name in recorded:
            path = root / name
            consumed[f"{prefix}{name}"] = sha256_file(path) if path.is_file() else "missing"

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


def ensure_json(context: Context, path: Path, compute) -> dict:
    """Read a finished evaluation result, or compute and write it (idempotent)."""
    if path.is_file():
        return read_json(path)
    started = time.perf_counter()
    value = compute() | {"seconds": 0.0}
    value["seconds"] = time.perf_counter() - started
    if context.main:
        write_json_atomic(path, value)
    context.accelerator.wait_for_everyone()
    return value


# ---------------------------------------------------------------------------- measurements

def heldout_perplexity(context: Context, model, label: str, block_nll_path: Path | None = None) -> dict:
    config = context.config
    # Streamed from disk: evaluation memory does not grow with the held-out split.
    stream = TokenStream.from_parquet(context.run.human_heldout)
    batch = config.evaluate.batch_size
    precision = config.evaluate.mixed_precision
    blocks = perplexity_blocks(model, stream, config.eval_block_size, batch, context.accelerator,
                               progress=f"ppl blocks ({label})" if context.progress else None, precision=precision)
    # The </s> confound: OPT's </s> opens every held-out line but never appears in synthetic text.
    no_eos = perplexity_blocks(model, stream, config.eval_block_size, batch, context.accelerator,
                               progress=f"ppl blocks, no </s> ({label})" if context.progress else None,
                               precision=precision, excluded_targets=end_of_text_ids(tokenizer_of(context)))
    sliding = perplexity_sliding(model, stream, config.evaluate.window, config.evaluate.stride, batch,
                                 context.accelerator, progress=f"ppl sliding ({label})" if context.progress else None,
                                 precision=precision)
    if block_nll_path is not None and context.main:
        from lmcollapse.atomic import atomic_path

        with atomic_path(block_nll_path) as scratch:
            with open(scratch, "wb") as handle:
                np.save(handle, blocks.sequence_nll / np.maximum(blocks.sequence_tokens, 1))
    return {"ppl_blocks": blocks.perplexity, "ppl_blocks_no_eos": no_eos.perplexity, "ppl_sliding": sliding.perplexity,
            "blocks": blocks.summary(), "blocks_no_eos": no_eos.summary(), "sliding": sliding.summary()}


def corpus_text_metrics(config: PipelineConfig, texts: list[str]) -> dict:
    """Self-BLEU and distinct-n of a corpus of texts, with the settings they were computed with."""
    settings = config.evaluate
    encoded = EncodedCorpus.from_texts(texts, settings.text_tokenization)
    metrics: dict[str, float | int | str | None] = {
        "text_tokenization": settings.text_tokenization, "samples": encoded.num_samples,
        "self_bleu_samples": None, "self_bleu_seed": config.seed, "self_bleu_smoothing": settings.self_bleu_smoothing}
    if encoded.num_samples >= 2:
        subset = encoded
        if settings.self_bleu_samples is not None and settings.self_bleu_samples < encoded.num_samples:
            # The same indices every generation (corpora keep their size): paired comparisons.
            subset = encoded.subset(subsample_indices(encoded.num_samples, settings.self_bleu_samples, config.seed))
        scores = self_bleu_scores(subset, settings.self_bleu_max_n, settings.self_bleu_smoothing)
        metrics[f"self_bleu_{settings.self_bleu_max_n}"] = float(np.mean(scores))
        metrics["self_bleu_samples"] = subset.num_samples
    for n in range(1, settings.distinct_max_n + 1):
        metrics[f"distinct_{n}"] = distinct_n(encoded, n)
        metrics[f"distinct_{n}_li"] = distinct_n_li(encoded, n)
        metrics[f"distinct_{n}_per_sample"] = distinct_n_per_sample(encoded, n)
    return metrics


def synthetic_text_metrics(context: Context, synthetic) -> dict:
    config = context.config
    metrics = corpus_text_metrics(config, synthetic["text"])
    human_texts = read_records(context.run.human_train)["text"]
    survival, rare = rare_ngram_survival(human_texts, synthetic["text"], config.evaluate.rare_ngram_n,
                                         config.evaluate.rare_ngram_max_count, config.evaluate.text_tokenization)
    metrics.update(rare_survival=survival, rare_ngrams=rare)
    return metrics


def synthetic_tails(context: Context, index: int, model, synthetic, values_path: Path) -> dict:
    """Per-sample perplexity of the corpus under the generation-0 model, and its quantiles."""
    config = context.config
    if not config.evaluate.tails:
        return {}
    scorer = model
    if index > 0:
        from lmcollapse.modeling import load_model

        scorer, _ = load_model(context.run.generation(0).model, config.model.attn_implementation, with_tokenizer=False)
        scorer = scorer.to(context.accelerator.device)
    values = sample_perplexities(scorer, [np.asarray(ids, dtype=np.int64) for ids in synthetic["input_ids"]],
                                 config.evaluate.batch_size, context.accelerator,
                                 progress="tails" if context.progress else None,
                                 precision=config.evaluate.mixed_precision)
    if context.main:
        from lmcollapse.atomic import atomic_path

        with atomic_path(values_path) as scratch:
            with open(scratch, "wb") as handle:
                np.save(handle, values)
    return {f"tail_ppl_p{q}": REGISTRY[f"tail_ppl_p{q}"].function(values) for q in TAIL_QUANTILES} | {
        "scored_by": "generation-00/model", "samples": int(np.isfinite(values).sum())}


def metrics_row(config, index, train_set, sources, train_log, shards, perplexities, text_metrics, tails, timings) -> dict:
    samples = sum(s["records"] for s in shards)
    new_tokens = sum(s["new_tokens"] for s in shards)
    row = {"generation": index, "seed": config.seed,
           "ppl_blocks": perplexities["ppl_blocks"], "ppl_blocks_no_eos": perplexities["ppl_blocks_no_eos"],
           "ppl_sliding": perplexities["ppl_sliding"]}
    row.update({k: v for k, v in text_metrics.items()
                if k.startswith(("self_bleu_", "distinct_", "rare_survival", "text_tokenization"))})
    row.update({k: v for k, v in tails.items() if k.startswith("tail_ppl_")})
    row.update({
        "train_blocks": len(train_set), "train_human_fraction": sources.get(HUMAN, 0) / max(len(train_set), 1),
        "train_tokens": train_log["tokens"], "train_steps": train_log["steps"], "train_loss": train_log["final_loss"],
        **({"train_epoch_kept": train_log["selection"]["epoch"], "train_val_loss": train_log["selection"]["validation_loss"]}
           if train_log.get("selection") else {}),
        "train_seconds": timings["train_seconds"],
        "train_tokens_per_second": train_log["tokens"] / train_log["seconds"] if train_log["seconds"] else math.nan,
        "synthetic_samples": samples, "synthetic_tokens": new_tokens,
        "generate_seconds": timings["generate_seconds"],
        "generate_tokens_per_second": new_tokens / timings["generate_seconds"] if timings["generate_seconds"] else math.nan,
        "eval_seconds": timings["eval_seconds"]})
    return row


# ---------------------------------------------------------------------------- the table

def collect_rows(run: RunDir) -> list[dict]:
    """The metrics rows of the complete generations, in order; a stale generation (built on a
    lineage that no longer exists) is left out, an edited manifest is an error."""
    stale = {c.name for c in verify_run(run, quick=True) if c.state == STALE}
    return [read_manifest(g.manifest)["metrics"] for g in run.complete_generations() if g.name not in stale]


def reference_rows(run: RunDir) -> dict[str, dict]:
    reference = {}
    if run.base_eval.is_file():
        reference["base"] = {k: v for k, v in read_manifest(run.base_eval).items() if k.startswith("ppl_")}
    if run.human_manifest.is_file():
        reference["human"] = dict(read_manifest(run.human_manifest).get("text_metrics", {}))
    return reference


def refresh_metrics(run: RunDir, config: PipelineConfig) -> None:
    header = {"run": run.name, "pipeline": config.name, "config_fingerprint": config.fingerprint(),
              "seed": config.seed, "reference": reference_rows(run)}
    write_metrics(run, collect_rows(run), header)


def summary_table(run: RunDir) -> str:
    return format_table(collect_rows(run), reference_rows(run))
