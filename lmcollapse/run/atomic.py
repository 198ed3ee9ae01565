"""Crash-safe writes and content fingerprints.

Every artefact a stage produces is written to a temporary sibling, flushed and fsynced, then
renamed into place with ``os.replace``: a reader sees the old file, the new one, or nothing,
never half of one. A ``kill -9`` at any instant leaves at most a ``.<name>.tmp`` sibling, which
the next attempt at the same artefact removes.

    with atomic_path(run / "metrics.json") as tmp:
        tmp.write_text(text)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmcollapse.errors import DiskFull, LmcollapseError
from lmcollapse.run.failpoints import failpoint

_CHUNK = 1 << 20


def temporary_sibling(final: Path) -> Path:
    """The fixed scratch name for ``final``: one writer per run (the run lock) makes it unique."""
    return final.with_name(f".{final.name}.tmp")


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fsync_path(path: Path) -> None:
    """fsync a file, or every file and folder under a directory, so a rename publishes data."""
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                _fsync_fd(child, os.O_RDONLY)
        for folder in sorted({p.parent for p in path.rglob("*")} | {path}):
            _fsync_fd(folder, os.O_RDONLY)
    else:
        _fsync_fd(path, os.O_RDONLY)


def fsync_dir(path: Path) -> None:
    """fsync a directory entry list (after a rename inside it), not the files below it."""
    _fsync_fd(path, os.O_RDONLY)


def _fsync_fd(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a scratch path beside ``final``; publish it as ``final`` only if the block succeeds.

    The scratch path may become a file or a directory. An existing ``final`` is replaced
    (a directory is swapped out first, since ``os.replace`` cannot overwrite a non-empty one).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = temporary_sibling(final)
    remove_path(scratch)
    try:
        yield scratch
        if not scratch.exists():
            raise FileNotFoundError(f"nothing was written to {scratch}")
        fsync_path(scratch)
        failpoint(f"write:{final.name}")
        if final.is_dir():
            retired = final.with_name(f".{final.name}.old")
            remove_path(retired)
            os.replace(final, retired)
            os.replace(scratch, final)
            remove_path(retired)
        else:
            os.replace(scratch, final)
        _fsync_fd(final.parent, os.O_RDONLY)
    except BaseException as err:
        # NOTE: diagnose before cleaning up: removing the scratch frees the space that shows
        # the disk was full.
        full = disk_full(err, final.parent)
        remove_path(scratch)
        if full is not None:
            raise DiskFull(f"disk full while writing {full or final}: free space and rerun the same command; "
                           "completed stages are intact") from err
        raise


DISK_NEARLY_FULL = 1 << 20  # bytes


def disk_full(err: BaseException, where: Path | None = None) -> str | None:
    """What was being written when the disk filled ('' if unknown), or None if ``err`` is something else.

    Python reports ENOSPC/EDQUOT with an errno and pyarrow in its message, but torch's zip
    writer only says "unexpected pos ..."; so an error while the filesystem of ``where`` is
    (nearly) full counts as a full disk too. Call it before removing what was half-written.
    """
    if isinstance(err, DiskFull):
        return None  # already diagnosed and cleaned up below
    if not isinstance(err, Exception):
        return None  # KeyboardInterrupt, SystemExit: not a write failure
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(seen.filename or "")
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return ""
        seen = seen.__cause__ or seen.__context__
    if where is not None and shutil.disk_usage(existing_ancestor(Path(where))).free < DISK_NEARLY_FULL:
        return ""
    return None


def existing_ancestor(path: Path) -> Path:
    """``path`` if it exists, else its nearest existing parent (a relative path ends at ``.``)."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def check_folder_target(path: Path, what: str, example: str) -> None:
    """Refuse, in one line, a folder to be written that is a file or lies under one."""
    existing = existing_ancestor(path)
    if existing.is_dir():
        return
    where = "is a file" if existing == Path(path) else f"is inside {existing}, which is a file"
    named = f"{what}{path}" if what.endswith("=") else f"{what} {path}"
    raise LmcollapseError(f"{named} {where}, not a folder: choose a folder, e.g. {example}")


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_path(final) as scratch:
        scratch.write_text(text, encoding="utf-8")


def write_json_atomic(final: Path, obj: Any) -> None:
    write_text_atomic(final, canonical_json(obj, indent=2) + "\n")


def write_array_atomic(final: Path, array: Any) -> None:
    """``np.save`` of ``array`` to ``final``, all or nothing."""
    with atomic_path(final) as scratch:
        with open(scratch, "wb") as handle:
            np.save(handle, array)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def nan_as_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (nan: a metric that is undefined) as None: the JSON files
    people read with other tools hold null, since JSON has no NaN (JavaScript's and jq's parsers
    refuse the bare ``NaN`` Python writes)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: nan_as_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_as_null(value) for value in obj]
    return obj


def canonical_json(obj: Any, indent: int | None = None) -> str:
    """JSON with sorted keys: equal objects give equal bytes, so hashes are stable."""
    return json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False, allow_nan=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its path relative to ``root``."""
    root = Path(root)
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def changed_files(recorded: dict[str, str], root: Path, quick: bool = False) -> dict[str, str | None]:
    """The files under ``root`` that no longer match the sha256 recorded for them, by name (sorted):
    their sha256 now, or None where the file is missing. ``quick`` checks presence only."""
    changed: dict[str, str | None] = {}
    for name, expected in sorted(recorded.items()):
        path = Path(root) / name
        if not path.is_file():
            changed[name] = None
        elif not quick:
            actual = sha256_file(path)
            if actual != expected:
                changed[name] = actual
    return changed


def files_match(recorded: dict[str, str], root: Path) -> str | None:
    """None when every file under ``root`` matches its recorded sha256; else the first that does not."""
    return next(iter(changed_files(recorded, root)), None)


@contextlib.contextmanager
def full_disk_reported(run_root: Path | None):
    """A full disk outside an atomic write (a library writing on its own) is still a full disk:
    reported as one (exit 3) for the run being written, not as a traceback."""
    try:
        yield
    except LmcollapseError:
        raise
    except Exception as err:
        full = disk_full(err, run_root)
        if full is None:
            raise
        raise DiskFull(f"disk full while writing {full or run_root or 'the run'}: free space and rerun "
                       "the same command; completed stages are intact") from err
