"""A synthetic corpus on disk: shards of records, each complete iff its sidecar names its sha256.

    synthetic/shard-00000.parquet   the records of prompts [lo, hi)
    synthetic/shard-00000.json      written after it: {"shard", "sha256", "records", "first", ...}
    synthetic/generation_config.json, batch_probe.json   the decoding settings, the probed batch

    for index, (lo, hi) in enumerate(shard_ranges(len(prompts), 256)): ...
    completed_shard(folder, 3)      # the sidecar of a finished shard, or None
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.run.atomic import read_json, sha256_file


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
