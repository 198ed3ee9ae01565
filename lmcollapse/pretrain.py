"""The pretrained base of a preset: trained once on human text, cached by content, shared by runs.

The paper fine-tunes a *pretrained* OPT-125m. At CPU scale the same protocol needs a small model
that has already learned language on other text: a preset (``tiny-opt``) pretrained on a corpus
disjoint from the run's fine-tuning and held-out splits (the tokenized WikiText-2 train split),
with a byte-level BPE tokenizer trained on that corpus, as OPT's was on its pretraining data.

Pretraining costs minutes, so it is done once per content and reused by every run, seed and
pipeline that asks for the same base:

    <cache>/pretrained/<preset>-<key>/       <cache>: $LMCOLLAPSE_CACHE_DIR, else ~/.cache/lmcollapse
      init/          the fresh model and tokenizer pretraining starts from
      blocks.npy     the pretraining blocks (token ids)
      checkpoints/   while pretraining (resumable, as any training)
      model/         the pretrained model and tokenizer (from_pretrained-loadable)
      manifest.json  written last: the entry is complete iff it exists

``key`` is the sha256 of everything that decides the weights: the preset's shape, the
``pretrain`` settings (not how often it checkpoints) and the sha256 of the corpus files.

    entry = ensure_pretrained_base(config, accelerator)     # pretrains on a miss, resumes a partial one
    entry.model                                             # the folder a run copies into base/model
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcollapse import corpus
from lmcollapse.atomic import atomic_path, canonical_json, existing_ancestor, remove_path, sha256_bytes, sha256_file
from lmcollapse.config import PipelineConfig
from lmcollapse.errors import LmcollapseError
from lmcollapse.rundir import MANIFEST, environment_record, read_manifest, write_manifest
from lmcollapse.seeding import derive_seed, rng

log = logging.getLogger(__name__)

CACHE_ENV = "LMCOLLAPSE_CACHE_DIR"
# Bump when the pretraining procedure changes what it computes: old entries are then not reused.
PRETRAIN_FORMAT = 1


def cache_root() -> Path:
    """``$LMCOLLAPSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmcollapse``, else ``~/.cache/lmcollapse``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lmcollapse"


@dataclass(frozen=True)
class PretrainedBase:
    """One cache entry (complete or not)."""

    root: Path
    key: str

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def init(self) -> Path:
        return self.root / "init"

    @property
    def blocks(self) -> Path:
        return self.root / "blocks.npy"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def is_complete(self) -> bool:
        return self.manifest.is_file()

    def fix(self) -> str:
        return f"rm -r {self.root} (it is pretrained again on the next run)"


def pretrain_source(config: PipelineConfig) -> corpus.SplitSource:
    (source,) = corpus.locate_splits(config.pretrain.corpus, config.pretrain.split)
    return source


def pretrain_identity(config: PipelineConfig, source: corpus.SplitSource) -> dict:
    """Everything that decides the pretrained weights (what the cache key is the hash of)."""
    settings = {k: v for k, v in dataclasses.asdict(config.pretrain).items() if k != "checkpoint_every"}
    return {
        "format": PRETRAIN_FORMAT, "preset": config.model.name, "architecture": config.model.architecture(),
        "attn_implementation": config.model.attn_implementation, "pretrain": settings,
        "corpus": source.record(), "corpus_sha256": {p.name: sha256_file(p) for p in source.files}}


def locate_entry(config: PipelineConfig) -> PretrainedBase:
    source = pretrain_source(config)
    key = sha256_bytes(canonical_json(pretrain_identity(config, source)).encode())
    return PretrainedBase(cache_root() / "pretrained" / f"{config.model.name}-{key[:16]}", key)


def ensure_pretrained_base(config: PipelineConfig, accelerator, *, progress: bool = True) -> PretrainedBase:
    """The complete cache entry for ``config``'s base: reused if there, else pretrained (resuming
    a partial one). Called on every process; they train together."""
    entry = locate_entry(config)
    if entry.is_complete:
        check_entry(entry)
        return entry
    writable_parent = existing_ancestor(entry.root)
    if not os.access(writable_parent, os.W_OK):
        raise LmcollapseError(f"the pretrained-model cache {cache_root()} is not writable ({writable_parent} is "
                              f"read-only): set {CACHE_ENV}=<a writable folder>")
    with entry_lock(entry, accelerator.is_main_process):
        if not entry.is_complete:  # another process may have finished it while this one waited
            pretrain(config, entry, accelerator, progress)
    accelerator.wait_for_everyone()
    check_entry(entry)
    return entry


@contextmanager
def entry_lock(entry: PretrainedBase, enabled: bool):
    """One process pretrains an entry at a time; another run asking for it waits, then reuses it."""
    if not enabled:
        yield
        return
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
    for name, expected in record["files"].items():
        path = entry.model / name
        if not path.is_file() or sha256_file(path) != expected:
            raise LmcollapseError(f"pretrained base {path} is missing or changed since it was pretrained: {entry.fix()}")
    return record


def pretrain(config: PipelineConfig, entry: PretrainedBase, accelerator, progress: bool) -> None:
    from lmcollapse.modeling import build_preset_model, count_parameters, load_model, save_model, train_bpe_tokenizer
    from lmcollapse.train import train_model

    settings = config.pretrain
    source = pretrain_source(config)
    started = time.perf_counter()
    if accelerator.is_main_process and not (entry.init.is_dir() and entry.blocks.is_file()):
        log.info("base: pretraining %s on %s (once; cached in %s)", config.model.name, source.describe(), entry.root)
        lines = corpus.load_split_lines(source)
        vocab = config.model.vocab_size or int(config.model.architecture()["vocab_size"])
        tokenizer = train_bpe_tokenizer(lines["text"], vocab, int(config.model.architecture()["max_position_embeddings"]))
        blocks = corpus.cut_into_blocks(corpus.tokenize_lines(lines, tokenizer), settings.block_size,
                                        f"{settings.split} split of {settings.corpus}")
        if settings.max_blocks is not None and settings.max_blocks < len(blocks):
            blocks = blocks[np.sort(rng(settings.seed, "pretrain-subset").permutation(len(blocks))[:settings.max_blocks])]
        model = build_preset_model(config.model, tokenizer, seed=derive_seed(settings.seed, "pretrain-init"))
        with atomic_path(entry.blocks) as scratch:
            with open(scratch, "wb") as handle:
                np.save(handle, blocks.astype(np.int32))
        save_model(model, tokenizer, entry.init)  # last: init/ present means blocks.npy is too
    accelerator.wait_for_everyone()

    model, tokenizer = load_model(entry.init, config.model.attn_implementation)
    blocks = np.load(entry.blocks)
    sequences = [row.astype(np.int64) for row in blocks]
    model, outcome = train_model(
        model, sequences, settings.as_train_config(), seed=derive_seed(settings.seed, "pretrain"), generation=0,
        checkpoint_dir=entry.checkpoints, accelerator=accelerator, data_fingerprint=sha256_file(entry.blocks),
        pad_id=tokenizer.pad_token_id, progress=progress, label="pretraining")
    if accelerator.is_main_process:
        save_model(model, tokenizer, entry.model)
        write_manifest(entry.manifest, {
            "key": entry.key, **pretrain_identity(config, source), "parameters": count_parameters(model),
            "vocab_size": len(tokenizer), "blocks": len(sequences), "block_size": settings.block_size,
            "steps": outcome.steps, "tokens": outcome.tokens, "final_loss": outcome.final_loss,
            "seconds": outcome.seconds, "wall_seconds": time.perf_counter() - started,
            "resumed_from_step": outcome.resumed_from_step,
            "files": {p.name: sha256_file(p) for p in sorted(entry.model.iterdir()) if p.is_file()},
            **environment_record()})
        for scratch in (entry.checkpoints, entry.init, entry.blocks):
            remove_path(scratch)
        log.info("base: pretrained in %.0f s (%d steps, final loss %.3f): %s", outcome.seconds, outcome.steps,
                 outcome.final_loss, entry.model)
