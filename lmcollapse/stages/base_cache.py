"""Where a preset's pretrained base lives: a cache keyed by content, shared by runs.

Pretraining costs minutes, so it is done once per content and reused by every run, seed and
pipeline that asks for the same base (``stages.pretrain`` builds an entry):

    <cache>/pretrained/<preset>-<key>/       <cache>: $LMCOLLAPSE_CACHE_DIR, else ~/.cache/lmcollapse
      init/          the fresh model and tokenizer pretraining starts from
      blocks.npy     the pretraining blocks (token ids)
      checkpoints/   while pretraining (resumable, as any training)
      model/         the pretrained model and tokenizer (from_pretrained-loadable)
      manifest.json  written last: the entry is complete iff it exists

``key`` is the sha256 of everything that decides the weights: the preset's shape, the
``pretrain`` settings (not how often it checkpoints), the corpus files' sha256 (not where they
were found), the training precision and compilation, and the number of processes when the
micro-batch is not fixed (``pretrain_identity``).

Finding an entry needs neither torch nor a model: ``study plan`` and a study's coordinator ask
which bases are missing without loading either.

    entry = locate_entry(config)       # complete or not: entry.is_complete, entry.model
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from lmcollapse.config import PipelineConfig
from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.data.locate import SplitSource
from lmcollapse.run.atomic import canonical_json, sha256_bytes, sha256_file
from lmcollapse.run.layout import MANIFEST, child

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

    model = child("model")
    init = child("init")
    blocks = child("blocks.npy")
    checkpoints = child("checkpoints")
    manifest = child(MANIFEST)

    @property
    def is_complete(self) -> bool:
        return self.manifest.is_file()

    def fix(self) -> str:
        return f"rm -r {shlex.quote(str(self.root))} (it is pretrained again on the next run)"


def processes() -> int:
    """How many processes train together (accelerate launch and torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def pretrain_identity(config: PipelineConfig, source: SplitSource) -> dict:
    """Everything that decides the pretrained weights (what the cache key is the hash of).

    The corpus by content (its files' sha256; a hub split by its id), never by where it was found;
    the training precision and compilation, which pretraining shares with fine-tuning; and, when
    ``pretrain.micro_batch_size`` is null, the number of processes (it sets the micro-batches, and
    with them the dropout draws).
    """
    settings = {k: v for k, v in dataclasses.asdict(config.pretrain).items() if k != "checkpoint_every"}
    text = {"corpus": config.pretrain.corpus, "split": config.pretrain.split, "kind": source.kind}
    if source.files:
        text["sha256"] = sorted(sha256_file(p) for p in source.files)
    else:
        text["hub"] = source.record().get("hub")
    return {
        "format": PRETRAIN_FORMAT, "preset": config.model.name, "architecture": config.model.architecture(),
        "attn_implementation": config.model.attn_implementation, "pretrain": settings, "text": text,
        "mixed_precision": config.train.mixed_precision, "compile": config.train.compile,
        "processes": processes() if config.pretrain.micro_batch_size is None else None}


def locate_entry(config: PipelineConfig, source: SplitSource | None = None) -> PretrainedBase:
    """The cache entry of ``config``'s base (complete or not); ``source`` is the pretraining split
    (default: located now)."""
    source = source or CorpusPlan(config).pretraining
    key = sha256_bytes(canonical_json(pretrain_identity(config, source)).encode())
    return PretrainedBase(cache_root() / "pretrained" / f"{config.model.name}-{key[:16]}", key)
