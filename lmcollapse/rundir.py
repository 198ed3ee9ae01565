"""The run directory: every file name of a run, in one place, and the one-writer lock.

    runs/<run>/
      pipeline.yaml           the resolved config, exactly as used
      .lock                   held (flock) by the one process writing the run
      base/model/             the starting weights and tokenizer; base/manifest.json
      base/eval.json          zero-shot perplexity of the base model
      human/                  train.parquet, heldout.parquet, validation.parquet (token blocks with
                              provenance), manifest.json (sizes, sha256, human-corpus text metrics),
                              README.md (its dataset card: load_dataset("human") loads it)
      generation-00/
        lineage.json          written first: the manifests it is built on (checked on resume)
        train-set.parquet     exactly what this generation trains on
        decontamination.json  the detector's report, when decontaminate.enabled
        checkpoints/          step-000200/ ... while training (removed once model/ exists)
        model/                the trained model (from_pretrained-loadable), train_log.json, README.md
        synthetic/            shard-00000.parquet + shard-00000.json, generation_config.json,
                              README.md (the dataset card: load_dataset(<this folder>) loads it)
        eval/                 perplexity.json, heldout_block_nll.npy, text_metrics.json,
                              tails.json, tails.npy
        manifest.json         written last, atomically: the generation is complete iff it exists
      metrics.csv, metrics.json
      stale/                  stages moved aside because what they were built on changed
      report/                 make report's tables and figures
      tracking/               TensorBoard event files (track.with: [tensorboard])

A stage is complete when its marker file exists; markers are written last and atomically, so
a half-written folder is never mistaken for a done one. Manifests are in ``manifests.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmcollapse.atomic import read_json, sha256_file
from lmcollapse.errors import LmcollapseError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class GenerationDir:
    root: Path
    index: int

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def train_set(self) -> Path:
        return self.root / "train-set.parquet"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def lineage(self) -> Path:
        """What the generation was started on (the sha256 of its parent's and the base's manifests),
        written before its first file: a partial generation is checked against it on resume."""
        return self.root / "lineage.json"

    @property
    def is_complete(self) -> bool:
        return self.manifest.is_file()

    @property
    def train_log(self) -> Path:
        return self.model / "train_log.json"

    @property
    def decontamination(self) -> Path:
        """The detector's report, written before the training set it filtered (decontaminate.enabled)."""
        return self.root / "decontamination.json"

    @property
    def perplexity(self) -> Path:
        return self.eval / "perplexity.json"

    @property
    def heldout_block_nll(self) -> Path:
        return self.eval / "heldout_block_nll.npy"

    @property
    def text_metrics(self) -> Path:
        return self.eval / "text_metrics.json"

    @property
    def tails(self) -> Path:
        """The tail quantiles; ``tails_values`` holds every sample's perplexity under generation 0's model."""
        return self.eval / "tails.json"

    @property
    def tails_values(self) -> Path:
        return self.eval / "tails.npy"

    def synthetic_shards(self) -> list[Path]:
        return sorted(self.synthetic.glob("shard-*.parquet"))

    def synthetic_sidecars(self) -> list[Path]:
        return sorted(self.synthetic.glob("shard-*.json"))

    def latest_checkpoint(self) -> Checkpoint | None:
        return latest_checkpoint(self.checkpoints)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def pipeline_file(self) -> Path:
        return self.root / "pipeline.yaml"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def base_model(self) -> Path:
        return self.base / "model"

    @property
    def base_manifest(self) -> Path:
        return self.base / MANIFEST

    @property
    def base_eval(self) -> Path:
        """The base model's zero-shot held-out perplexity (protected like a manifest)."""
        return self.base / "eval.json"

    @property
    def human(self) -> Path:
        return self.root / "human"

    @property
    def human_manifest(self) -> Path:
        return self.human / MANIFEST

    @property
    def human_train(self) -> Path:
        return self.human / "train.parquet"

    @property
    def human_heldout(self) -> Path:
        return self.human / "heldout.parquet"

    @property
    def human_validation(self) -> Path:
        """Validation blocks (train.select=best-validation only)."""
        return self.human / "validation.parquet"

    @property
    def stale(self) -> Path:
        """Where stages built on a lineage that no longer exists are moved (never deleted)."""
        return self.root / "stale"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def generation(self, index: int) -> GenerationDir:
        return GenerationDir(self.root / f"generation-{index:02d}", index)

    def generations_on_disk(self) -> list[GenerationDir]:
        found = []
        for path in sorted(self.root.glob("generation-*")):
            suffix = path.name.removeprefix("generation-")
            if path.is_dir() and suffix.isdigit():
                found.append(GenerationDir(path, int(suffix)))
        return sorted(found, key=lambda g: g.index)

    def complete_generations(self) -> list[GenerationDir]:
        return [g for g in self.generations_on_disk() if g.is_complete]


# ---------------------------------------------------------------------------- shards and checkpoints

def shard_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    """The record ranges of a corpus's shards: shard i holds records [lo, hi)."""
    return [(lo, min(lo + shard_size, total)) for lo in range(0, total, shard_size)]


GENERATION_CONFIG_FILE = "generation_config.json"  # beside the shards: the decoding settings used
BATCH_PROBE_FILE = "batch_probe.json"  # beside them, with generate.batch_probe: the batch size chosen, and why


def shard_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    """A shard's Parquet file and its sidecar (written after it: the shard is complete iff both are)."""
    return out_dir / f"shard-{index:05d}.parquet", out_dir / f"shard-{index:05d}.json"


def completed_shard(out_dir: Path, index: int) -> dict | None:
    """The sidecar of a finished shard, or None if the shard is missing, partial or altered."""
    data, sidecar = shard_paths(out_dir, index)
    if not (data.is_file() and sidecar.is_file()):
        return None
    try:
        meta = read_json(sidecar)
    except (OSError, ValueError):
        return None
    return meta if meta.get("sha256") == sha256_file(data) else None


CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "trainer_state.json"
# Beside the step-NNNNNN checkpoints: the weights of an epoch that was the best on validation when
# it ended (best-epoch-003), with BEST_FILE ({"epoch", "loss"}) written inside them last.
BEST_NAME = re.compile(r"^best-epoch-(\d{3,})$")
BEST_FILE = "best.json"


def best_weights_path(checkpoint_dir: Path, epoch: int) -> Path:
    return checkpoint_dir / f"best-epoch-{epoch:03d}"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"step-{step:06d}"


def list_checkpoints(checkpoint_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first, by the step number in their name (never by mtime)."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(checkpoint_dir: Path) -> Checkpoint | None:
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def steps_per_epoch(num_blocks: int, batch_size: int) -> int:
    return -(-num_blocks // batch_size)


# ---------------------------------------------------------------------------- one writer per run

@contextlib.contextmanager
def run_lock(run: RunDir, enabled: bool = True) -> Iterator[None]:
    """Hold the run's lock for the duration, or fail at once if another live process holds it.

    ``flock`` is released by the kernel when its holder dies, so a lock left by a killed
    process never blocks: the file may still name it, but nobody holds it.
    """
    if not enabled:
        yield
        return
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(run.lock_file)
            raise LmcollapseError(
                f"run {run.root} is being written by another process ({holder}): wait for it to finish "
                "or stop it; two writers would corrupt the run") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)


def _read_holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
    except (OSError, ValueError):
        return "unknown process"


def lock_holder(run: RunDir) -> str | None:
    """Who holds the run's lock now, or None if nobody does (a stale file is not a holder)."""
    if not run.lock_file.exists():
        return None
    fd = os.open(run.lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _read_holder(run.lock_file)
    finally:
        os.close(fd)


















# ---------------------------------------------------------------------------- commands to paste

def _in_repository() -> bool:
    """Whether the working directory is the repository root, where ``make`` targets work."""
    return Path("Makefile").is_file() and Path("lmcollapse", "__init__.py").is_file()


def build_command(run_root: Path, last: int) -> str:
    """The command that makes generations 0..``last`` of the run at ``run_root`` complete.

    It names the run's own resolved config (``pipeline.yaml``), so it works for a run built
    from any pipeline and any ``SET=`` overrides; from outside the repository it calls the
    package with this interpreter.
    """
    run_root = Path(run_root)
    if _in_repository():
        return (f"make generation-{last} PIPELINE={shlex.quote(str(run_root / 'pipeline.yaml'))} "
                f"RUN={shlex.quote(str(run_root))}")
    return f"{shlex.quote(sys.executable)} -m lmcollapse generation {last} --run {shlex.quote(str(run_root.resolve()))}"


def rebuild_command(stage_root: Path, last: int | None = None) -> str:
    """Remove a stage's folder, then rebuild it (and what depends on it) with ``build_command``.

    ``stage_root`` is ``<run>/base``, ``<run>/human`` or ``<run>/generation-NN``; ``last`` defaults
    to the highest generation on disk.
    """
    stage_root = Path(stage_root)
    run = RunDir(stage_root.parent)
    if last is None:
        on_disk = [g.index for g in run.generations_on_disk()]
        last = max(on_disk, default=0)
    return f"rm -r {shlex.quote(str(stage_root))} && {build_command(run.root, last)}"


