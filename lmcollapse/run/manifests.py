"""What a stage records when it completes, and how later stages check it.

A manifest is JSON with a sha256 of its own body (``manifest_sha256``): an edited or truncated
manifest is refused, never trusted. It names the files the stage produced with their sha256, the
manifests it was built on, and the environment (versions, git commit, device).

    write_manifest(run.generation(0).manifest, {...})
    record = read_manifest(run.generation(0).manifest)
    check_unchanged(recorded_files(record), run.generation(0).root, "generation-00", accept_changed=False)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path

from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.atomic import canonical_json, changed_files, read_json, sha256_bytes, write_json_atomic
from lmcollapse.run.commands import accept_changed_command, rebuild_command

PIPELINE_DIGEST = "pipeline_yaml_sha256"


def pipeline_digest(pipeline_file: Path) -> str:
    """sha256 of a run's pipeline.yaml as data (its comments, which name the run's folder, left
    out): the human stage and every generation record it, so an edit of the file after they were
    built is seen, and a lost file can be written back from the config that matches it."""
    return pipeline_text_digest(Path(pipeline_file).read_text(encoding="utf-8"))


def pipeline_text_digest(text: str) -> str:
    """``pipeline_digest`` of a pipeline.yaml's text."""
    import yaml

    return sha256_bytes(canonical_json(yaml.safe_load(text)).encode())


def recorded_pipeline_digests(run) -> Iterator[tuple[str, str]]:
    """(stage, digest) for the human stage and each complete generation that recorded the
    pipeline.yaml it was built with; stages written before the record existed are left out."""
    for name, manifest in [("human", run.human_manifest)] + [(g.name, g.manifest) for g in run.complete_generations()]:
        try:
            recorded = read_json(manifest).get(PIPELINE_DIGEST) if manifest.is_file() else None
        except (OSError, ValueError):
            continue  # a damaged manifest is reported as such
        if recorded is not None:
            yield name, recorded


def edited_pipeline(run) -> str | None:
    """The first stage whose recorded pipeline.yaml differs from the run's file now (the file was
    edited after it was built: the next generation would mix two configs), or None."""
    if not run.pipeline_file.is_file():
        return None
    now = None
    for stage, recorded in recorded_pipeline_digests(run):
        try:
            now = now or pipeline_digest(run.pipeline_file)
        except Exception:  # noqa: BLE001 - unreadable YAML: loading the config says what is wrong
            return None
        if recorded != now:
            return stage
    return None


def physical_memory_bytes() -> float:
    """This machine's memory in bytes, as the OS reports it (infinite where it does not)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def environment_record() -> dict:
    """Package versions, git commit, machine: what a reader needs to trust a number."""
    import accelerate
    import datasets
    import tokenizers
    import torch
    import transformers

    import lmcollapse

    versions = {
        "python": platform.python_version(), "lmcollapse": lmcollapse.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "datasets": datasets.__version__,
        "accelerate": accelerate.__version__, "tokenizers": tokenizers.__version__,
    }
    # The thread count is recorded: on a CPU a run's numbers depend on it (float sums in another order).
    # So is the CPU model: on another one the math libraries pick other vector kernels.
    return {"versions": versions, "git_commit": git_commit(), "machine": platform.machine(),
            "cpu": cpu_model(), "device": _device_name(), "threads": torch.get_num_threads()}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


# Each manifest carries the sha256 of its own contents: an edit by hand (a seed, a metric, a
# recorded hash) is caught on the next read instead of flowing into the tables.
MANIFEST_CHECKSUM = "manifest_sha256"


def _manifest_checksum(body: dict) -> str:
    return sha256_bytes(canonical_json({k: v for k, v in body.items() if k != MANIFEST_CHECKSUM}).encode())


def write_manifest(path: Path, record: dict) -> None:
    """Write a stage's manifest (or another protected record) atomically, with its checksum."""
    write_json_atomic(path, {**record, MANIFEST_CHECKSUM: _manifest_checksum(record)})


def read_manifest(path: Path, fix: str | None = None) -> dict:
    """A manifest whose checksum matches its contents; a one-line error for anything else.

    ``fix`` is the command the error suggests; by default, rebuilding the manifest's stage.
    """
    path = Path(path)
    fix = fix or rebuild_command(path.parent)
    try:
        record = read_json(path)
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        raise LmcollapseError(f"{path} is unreadable (truncated or modified by hand): restore it, or rebuild it: {fix}")
    if record.get(MANIFEST_CHECKSUM) != _manifest_checksum(record):
        state = "has no checksum (written by an older lmcollapse?)" if MANIFEST_CHECKSUM not in record else \
            "was edited after its stage completed (its manifest_sha256 does not match its contents)"
        raise LmcollapseError(f"{path} {state}: restore it, or rebuild it: {fix}")
    return record


FILES = "files"  # a manifest's map of the files its stage produced: name -> sha256
OLD_FILES = "outputs"  # its name in the generation manifests of older runs (still read)


def recorded_files(manifest: dict) -> dict[str, str]:
    """The files a stage's manifest records, by name (relative to the stage) with their sha256."""
    return manifest[FILES] if FILES in manifest else manifest.get(OLD_FILES, {})


def check_unchanged(recorded: dict[str, str], root: Path, what: str, accept_changed: bool,
                    stage_root: Path | None = None, quick: bool = False) -> list[str]:
    """Compare files under ``root`` with the sha256 recorded when ``what`` completed.

    Raises naming the first changed file, and the command that rebuilds the stage at
    ``stage_root`` (default ``root``), unless ``accept_changed``; returns the changed names.
    A file that is missing, or changed so that it can no longer be read (a truncated Parquet
    file, say), is never accepted: the message offers ``--accept-changed`` only where it works.
    ``quick`` only checks that every file is there.
    """
    changed = changed_files(recorded, root, quick)
    for name, actual in changed.items():
        path = root / name
        unusable = "missing" if actual is None else unreadable_reason(path)
        if accept_changed and unusable is None:
            continue
        rebuild = f"rebuild it with `{rebuild_command(stage_root or root)}`"
        if actual is None:
            state = "is missing"
        elif unusable is not None:
            state = f"changed and cannot be read ({unusable})"
        else:
            state = f"changed (sha256 {actual[:12]}, recorded {recorded[name][:12]})"
        fix = f"restore it, or {rebuild}" if unusable is not None else \
            f"restore it, {rebuild}, or use it as it is now with `{accept_changed_command(stage_root or root)}`"
        raise LmcollapseError(f"{path} {state} since {what} completed: {fix}")
    return list(changed)


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be read as what its suffix says (Parquet, JSON, NumPy, safetensors), or
    None: what ``--accept-changed`` checks before a changed file is used as it is."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".npy":
            import numpy as np

            np.load(path, allow_pickle=False)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(path)
        else:
            path.read_bytes()
    except Exception as err:  # noqa: BLE001 - every reader's failure means the same: not usable
        return error_reason(err, 100)
    return None
