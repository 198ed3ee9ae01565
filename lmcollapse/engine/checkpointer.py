"""A training run's checkpoints, owned in one place: their names, discovery, completeness, saving,
verification against recorded hashes, pruning, and the best epoch's weights.

    checkpoints/
      step-000200/             accelerate's save_state (model, optimizer, scheduler, RNG) and
                               trainer_state.json (step, loss log, data fingerprint, sha256 of
                               each file), written last: the folder is complete iff it exists
      best-epoch-003/          with train.select=best-validation: the weights of an epoch that was
                               the best on validation when it ended; best.json written last

    checkpointer = Checkpointer(generation.checkpoints, keep=2)
    latest = checkpointer.latest()                       # by the step in its name, never by mtime
    state = checkpointer.verify(latest, data_fingerprint)
    checkpointer.save(accelerator, step, history, data_fingerprint, seconds)

Used by fine-tuning (``generation-NN/checkpoints``) and by pretraining (the cache entry's
``checkpoints``) alike. A checkpoint is written to ``.step-000200.tmp``, fsynced and renamed
into place; the last ``keep`` are kept.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmcollapse.errors import DiskFull, LmcollapseError
from lmcollapse.run.atomic import (
    atomic_path,
    canonical_json,
    disk_full,
    files_match,
    fsync_dir,
    fsync_path,
    read_json,
    remove_path,
    sha256_file,
    temporary_sibling,
)
from lmcollapse.run.failpoints import failpoint

CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "trainer_state.json"
BEST_NAME = re.compile(r"^best-epoch-(\d{3,})$")
BEST_FILE = "best.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


@dataclass(frozen=True)
class Checkpointer:
    """Every checkpoint of one training run, in ``folder``; ``keep`` of them are kept.

    The best-epoch weights are kept until a checkpoint that knows a better epoch exists, so a
    resume from any kept checkpoint finds the weights its history names."""

    folder: Path
    keep: int = 2

    def path(self, step: int) -> Path:
        return self.folder / f"step-{step:06d}"

    def all(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first, by the step number in their name (never by mtime)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = CHECKPOINT_NAME.match(path.name)
            if match and path.is_dir() and (path / STATE_FILE).is_file():
                found.append(Checkpoint(int(match.group(1)), path))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        found = self.all()
        return found[-1] if found else None

    def verify(self, checkpoint: Checkpoint, data_fingerprint: str) -> dict:
        """The checkpoint's state, once its files match the sha256 it recorded and it was trained on
        the data ``data_fingerprint`` names; a one-line error with the fix otherwise."""
        try:
            state = read_json(checkpoint.path / STATE_FILE)
        except (OSError, ValueError):
            raise LmcollapseError(f"checkpoint {checkpoint.path} has an unreadable {STATE_FILE}: delete the folder "
                                  "to resume from an earlier checkpoint") from None
        if state.get("data_fingerprint") != data_fingerprint:
            raise LmcollapseError(
                f"checkpoint {checkpoint.path} was trained on other data (fingerprint does not match "
                "this generation's training set): delete the checkpoints folder to retrain from the start")
        mismatch = files_match(state.get("files", {}), checkpoint.path)
        if mismatch is not None:
            raise LmcollapseError(
                f"checkpoint file {checkpoint.path / mismatch} is missing or does not match its recorded sha256 "
                f"(truncated or modified): delete {checkpoint.path} to resume from an earlier checkpoint")
        return state

    def save(self, accelerator, step: int, history: list[dict], data_fingerprint: str, seconds: float = 0.0,
             validation: list[dict] | None = None) -> Path:
        """``accelerator.save_state`` and the training state, as a complete ``step-NNNNNN`` or not at all."""
        final = self.path(step)
        scratch = temporary_sibling(final)
        if accelerator.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_path(scratch)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(scratch), safe_serialization=True)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                self._publish(scratch, final, {"step": step, "data_fingerprint": data_fingerprint, "log": history,
                                               "seconds": seconds, "validation": validation or []})
        except BaseException as err:
            # NOTE: diagnose before cleaning up: removing the scratch frees the space that shows the
            # disk was full (torch's writer says only "unexpected pos ...").
            full = disk_full(err, self.folder)
            if accelerator.is_main_process:
                remove_path(scratch)  # a failed write (disk full) must not keep eating space
            if full is not None:
                raise DiskFull(f"disk full while writing checkpoint {final}: free space and rerun the same command; "
                               "completed stages are intact") from err
            raise
        accelerator.wait_for_everyone()
        return final

    def _publish(self, scratch: Path, final: Path, state: dict) -> None:
        files = {p.name: sha256_file(p) for p in sorted(scratch.iterdir()) if p.is_file()}
        (scratch / STATE_FILE).write_text(canonical_json({**state, "files": files}, indent=1), encoding="utf-8")
        fsync_path(scratch)
        failpoint("checkpoint-write")
        # NOTE: trainer_state.json is written last and the folder renamed in one step, so a folder
        # named step-NNNNNN is always complete.
        remove_path(final)
        os.replace(scratch, final)
        fsync_dir(self.folder)
        for old in self.all()[:-self.keep]:
            remove_path(old.path)

    # ------------------------------------------------------------------------ the best epoch's weights

    def best_path(self, epoch: int) -> Path:
        return self.folder / f"best-epoch-{epoch:03d}"

    def save_best(self, accelerator, model, epoch: int, loss: float) -> None:
        """The weights of the best epoch so far, beside the checkpoints (written whole or not at all)."""
        from safetensors.torch import save_model

        if accelerator.is_main_process:
            plain = accelerator.unwrap_model(model, keep_fp32_wrapper=True, keep_torch_compile=False)
            with atomic_path(self.best_path(epoch)) as scratch:
                scratch.mkdir(parents=True)
                save_model(plain, str(scratch / WEIGHTS))
                (scratch / BEST_FILE).write_text(canonical_json({"epoch": epoch, "loss": loss}), encoding="utf-8")
        accelerator.wait_for_everyone()

    def prune_best(self) -> None:
        """Remove the best-epoch weights no kept checkpoint can need: those of epochs before the best
        epoch that the *oldest* kept checkpoint already knows (a resume never goes back further)."""
        kept = self.all()
        if not kept:
            return
        history = read_json(kept[0].path / STATE_FILE).get("validation", [])
        if not history:
            return
        known_best = min(history, key=lambda v: v["loss"])["epoch"]
        for path in self.folder.iterdir():
            match = BEST_NAME.match(path.name)
            if match and int(match.group(1)) < known_best:
                remove_path(path)

    def load_best(self, model, epoch: int) -> None:
        """Load the weights of ``epoch`` (the best on validation) into ``model``."""
        from safetensors.torch import load_model

        folder = self.best_path(epoch)
        recorded = read_json(folder / BEST_FILE) if (folder / BEST_FILE).is_file() else {}
        if recorded.get("epoch") != epoch:
            raise LmcollapseError(
                f"{folder} is missing or incomplete (the weights of epoch {epoch}, the best on validation): delete "
                f"{self.folder} to retrain this generation")
        load_model(model, str(folder / WEIGHTS))

    def remove(self) -> None:
        """Every checkpoint, once the trained model is saved."""
        remove_path(self.folder)


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """``Checkpointer(folder).all()``: the complete checkpoints in ``folder``, oldest first."""
    return Checkpointer(folder).all()


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """``Checkpointer(folder).latest()``."""
    return Checkpointer(folder).latest()
