"""Text records with provenance, stored as Parquet through ``datasets``.

Every block of text a generation trains on or writes is one record:

    id          unique: ``human-<split>-000123`` or ``g01-0000123``
    source      ``human`` or ``synthetic``
    generation  the generation whose model wrote it (null for human text)
    parent      the id of the record it continues (null for human text)
    model       the model that wrote it, by content: ``sha256:<hex>`` of its weights
                (``model.safetensors``; see modeling.weights_sha256), null for human text;
                with ``generation`` it identifies the writer wherever the run is moved
    input_ids   token ids: what the next generation trains on (decode -> encode is not the
                identity for BPE, so the ids are kept, not only the text)
    text        the decoded ids, for metrics and for people

    write_records(records, path)      # atomic; returns the file's sha256
    records = read_records(path)      # a datasets.Dataset, in memory

``datasets`` (with pandas, 1 s) is imported by the functions that build or read records, not by
this module: the tables, ``status`` and a study's coordinator use the labels alone.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.atomic import atomic_path, sha256_file

if TYPE_CHECKING:
    import datasets

HUMAN, SYNTHETIC = "human", "synthetic"


@functools.cache
def record_features() -> datasets.Features:
    """The columns of every record file, with their types."""
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "generation": datasets.Value("int32"),
        "parent": datasets.Value("string"),
        "model": datasets.Value("string"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "text": datasets.Value("string"),
    })


def make_records(columns: dict[str, list]) -> datasets.Dataset:
    import datasets

    return datasets.Dataset.from_dict(columns, features=record_features())


def write_records(records: datasets.Dataset, path: Path) -> str:
    """Write ``records`` to ``path`` as Parquet, atomically; return the file's sha256."""
    with atomic_path(Path(path)) as scratch:
        records.to_parquet(str(scratch))
    return sha256_file(path)


def read_records(path: Path) -> datasets.Dataset:
    """Read a Parquet file of records into memory (no cache files written anywhere)."""
    import datasets

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise LmcollapseError(
            f"{path} is not readable Parquet ({error_reason(err, 120)}): it was truncated or "
            "modified; delete it and rerun to rebuild it") from None
    return datasets.Dataset(table)


def concatenate(parts: list[datasets.Dataset]) -> datasets.Dataset:
    parts = [p for p in parts if len(p)]
    if not parts:
        return make_records({name: [] for name in record_features()})
    import datasets

    return datasets.concatenate_datasets([p.cast(record_features()) for p in parts])
