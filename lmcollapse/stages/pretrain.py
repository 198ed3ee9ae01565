"""The pretrained base of a preset: trained once on human text, cached by content, shared by runs.

The paper fine-tunes a *pretrained* OPT-125m. At CPU scale the same protocol needs a small model
that has already learned language on other text: a preset (``tiny-opt``) pretrained on a corpus
disjoint from the run's fine-tuning and held-out splits (the tokenized WikiText-2 train split),
with a byte-level BPE tokenizer trained on that corpus, as OPT's was on its pretraining data.

Pretraining costs minutes, so it is done once per content and reused by every run, seed and
pipeline that asks for the same base, from a cache keyed by content (``base_cache``).

    entry = ensure_pretrained_base(config, accelerator)     # pretrains on a miss, resumes a partial one
    entry.model                                             # the folder a run copies into base/model
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from contextlib import contextmanager

import numpy as np

from lmcollapse.config import PipelineConfig
from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.data.locate import SplitSource
from lmcollapse.data.read import cut_into_blocks, load_split_lines, tokenize_lines
from lmcollapse.engine.checkpointer import Checkpointer
from lmcollapse.engine.modeling import build_preset_model, count_parameters, load_model, save_model, train_bpe_tokenizer
from lmcollapse.engine.training import train_model
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import existing_ancestor, files_match, remove_path, sha256_file, write_array_atomic
from lmcollapse.run.manifests import environment_record, read_manifest, recorded_files, write_manifest
from lmcollapse.run.seeding import derive_seed, rng
from lmcollapse.stages.base_cache import CACHE_ENV, PretrainedBase, cache_root, locate_entry, pretrain_identity

log = logging.getLogger(__name__)


def ensure_pretrained_base(config: PipelineConfig, accelerator, corpus: CorpusPlan | None = None, *,
                           progress: bool = True) -> PretrainedBase:
    """The complete cache entry for ``config``'s base: reused if there, else pretrained (resuming
    a partial one). Called on every process; they train together.

    The main process decides, holding the entry's lock while another run pretrains it, and tells
    the others: every process then takes the same path through the same collectives.
    """
    source = (corpus or CorpusPlan(config)).pretraining
    entry = locate_entry(config, source)
    with contextlib.ExitStack() as held:
        decision = [None]
        if accelerator.is_main_process:
            if not entry.is_complete:
                check_writable(entry)
                held.enter_context(entry_lock(entry))
            decision = [not entry.is_complete]  # again under the lock: another run may have finished it
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(decision)
        if decision[0]:
            pretrain(config, entry, source, accelerator, progress)
        accelerator.wait_for_everyone()
    check_entry(entry)
    return entry


def check_writable(entry: PretrainedBase) -> None:
    parent = existing_ancestor(entry.root)
    if not parent.is_dir():  # LMCOLLAPSE_CACHE_DIR names a file, or a path under one
        raise LmcollapseError(f"the pretrained-model cache {cache_root()} is not a folder ({parent} is a file): "
                              f"set {CACHE_ENV}=<a writable folder>")
    if not os.access(parent, os.W_OK):
        raise LmcollapseError(f"the pretrained-model cache {cache_root()} is not writable ({parent} is read-only): "
                              f"set {CACHE_ENV}=<a writable folder>")


@contextmanager
def entry_lock(entry: PretrainedBase):
    """One process pretrains an entry at a time; another run asking for it waits, then reuses it."""
    entry.root.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(entry.root.parent / f"{entry.root.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("base: another process is pretraining %s; waiting for it", entry.root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_entry(entry: PretrainedBase) -> dict:
    """A complete entry whose files match its manifest; a one-line error naming the fix otherwise."""
    record = read_manifest(entry.manifest, fix=entry.fix())
    mismatch = files_match(recorded_files(record), entry.model)
    if mismatch is not None:
        raise LmcollapseError(f"pretrained base {entry.model / mismatch} is missing or changed since it was pretrained: "
                              f"{entry.fix()}")
    return record


def pretrain(config: PipelineConfig, entry: PretrainedBase, source: SplitSource, accelerator, progress: bool) -> None:
    settings = config.pretrain
    started = time.perf_counter()
    if accelerator.is_main_process and not (entry.init.is_dir() and entry.blocks.is_file()):
        log.info("base: pretraining %s on %s (once; cached in %s)", config.model.name, source.describe(), entry.root)
        lines = load_split_lines(source)
        shape = config.model.architecture()  # model.vocab_size and model.max_positions applied
        tokenizer = train_bpe_tokenizer(lines["text"], int(shape["vocab_size"]), int(shape["max_position_embeddings"]),
                                        config.model.family)
        blocks = cut_into_blocks(tokenize_lines(lines, tokenizer), settings.block_size,
                                        f"{settings.split} split of {settings.corpus}")
        if settings.max_blocks is not None and settings.max_blocks < len(blocks):
            blocks = blocks[np.sort(rng(settings.seed, "pretrain-subset").permutation(len(blocks))[:settings.max_blocks])]
        model = build_preset_model(config.model, tokenizer, seed=derive_seed(settings.seed, "pretrain-init"))
        write_array_atomic(entry.blocks, blocks.astype(np.int32))
        save_model(model, tokenizer, entry.init)  # last: init/ present means blocks.npy is too
    accelerator.wait_for_everyone()

    model, tokenizer = load_model(entry.init, config.model.attn_implementation)
    blocks = np.load(entry.blocks)
    sequences = [row.astype(np.int64) for row in blocks]
    model, outcome = train_model(
        # train.compile applies to pretraining too (its cache key records it)
        model, sequences, dataclasses.replace(settings.as_train_config(), compile=config.train.compile),
        seed=derive_seed(settings.seed, "pretrain"), generation=0,
        checkpoint_dir=entry.checkpoints, accelerator=accelerator, data_fingerprint=sha256_file(entry.blocks),
        pad_id=tokenizer.pad_token_id, progress=progress, label="the base")
    if accelerator.is_main_process:
        save_model(model, tokenizer, entry.model)
        write_manifest(entry.manifest, {
            "key": entry.key, **pretrain_identity(config, source), "corpus": source.record(),
            "corpus_sha256": {p.name: sha256_file(p) for p in source.files}, "parameters": count_parameters(model),
            "vocab_size": len(tokenizer), "blocks": len(sequences), "block_size": settings.block_size,
            "steps": outcome.steps, "tokens": outcome.tokens, "final_loss": outcome.final_loss,
            "seconds": outcome.seconds, "wall_seconds": time.perf_counter() - started,
            "resumed_from_step": outcome.resumed_from_step,
            "files": {p.name: sha256_file(p) for p in sorted(entry.model.iterdir()) if p.is_file()},
            **environment_record()})
        Checkpointer(entry.checkpoints).remove()
        for scratch in (entry.init, entry.blocks):
            remove_path(scratch)
        log.info("base: pretrained in %.0f s (%d steps, final loss %.3f): %s", outcome.seconds, outcome.steps,
                 outcome.final_loss, entry.model)
