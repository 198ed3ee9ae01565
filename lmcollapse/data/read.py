r"""Reading a corpus: check its files, load its rows, cut them into token blocks.

A named corpus (``wikitext-2-raw-v1``) is looked up in ``$LMCOLLAPSE_DATA_DIR/<folder>/``, then
``data/<folder>/``, then on the Hugging Face hub; any local folder of text files can be named
instead (a split is ``<split>.txt``/``.raw``/``.tokens``, ``wiki.<split>.*``, or a sub-folder
``<split>/`` of such files). Files are checked before use: present, non-empty, UTF-8.

The lines do not depend on where the corpus was found. Every corpus, named or a plain local
folder, and from local files or the hub alike, is read with the convention of the hub's WikiText
builder (the ``wikitext.py`` script of ``Salesforce/wikitext``): each line of each file, in order,
read in text mode (UTF-8, universal newlines: ``\r\n`` and ``\r`` become ``\n``; nothing else
ends a line), is one row, its line break kept, except that a line with nothing but whitespace
(``not row.strip()``: the blank ``" \n"`` of WikiText, ``"\t\n"``, a last line of spaces without
a newline, ...) becomes the empty string ``""``. A file that does not end with a newline ends with
a row without one; the files of a split are read one after the other, in sorted order. So a named
corpus gives exactly the rows ``datasets.load_dataset("Salesforce/wikitext", config)`` gives, and a
local folder follows the same rule, so that a corpus copied between a folder and the hub reads the
same. (``tokenize_lines`` then turns each empty row into the tokenizer's special tokens alone, as
the reference code does with the hub's rows.)

    source = locate_split("wikitext-2-raw-v1", "validation")
    lines = load_split_lines(source)                       # a datasets.Dataset of lines
    blocks = cut_into_blocks(tokenize_lines(lines, tokenizer), 64)

Locating the splits is ``locate.py``'s job; this module reads what it located, checks the files
(present, non-empty, UTF-8, the format their suffix says), and fetches a named corpus's archive.
"""

from __future__ import annotations

import codecs
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lmcollapse.config.corpora import NAMED_CORPORA
from lmcollapse.data.locate import (
    DATA_DIR_ENV,
    STRUCTURED_SUFFIXES,
    SplitSource,
    broken_link_error,
    is_broken_link,
)
from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.atomic import atomic_path

log = logging.getLogger(__name__)


def check_text_file(path: Path) -> None:
    """Raise a one-line error unless ``path`` is a non-empty UTF-8 text file."""
    if is_broken_link(path):
        raise broken_link_error(path)
    if not path.is_file():
        raise LmcollapseError(f"corpus file {path} not found: check data.corpus and {DATA_DIR_ENV}")
    size, has_text = check_utf8(path)
    if size == 0 or not has_text:
        raise LmcollapseError(f"corpus file {path} is empty: point data.corpus at text, or remove the file")


def check_utf8(path: Path) -> tuple[int, bool]:
    """The size of ``path`` and whether it holds any non-whitespace text; a one-line error naming
    the first byte that is not UTF-8, at its offset in the file."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    has_text = False
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as err:
                # err.object is what the decoder held: the bytes of a character the last chunk cut, then this chunk
                held = len(err.object) - len(chunk)
                raise LmcollapseError(
                    f"corpus file {path} is not UTF-8 (invalid byte 0x{err.object[err.start]:02x} at offset "
                    f"{offset - held + err.start}): re-encode it as UTF-8, e.g. iconv -t UTF-8") from None
            has_text = has_text or bool(text.strip())
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise LmcollapseError(
                f"corpus file {path} is not UTF-8 (truncated character at the end): re-encode it as UTF-8") from None
    return offset, has_text


def hub_builder_line(row: str) -> str:
    """One row as the hub's WikiText builder yields it: the line itself, or "" if it is only whitespace."""
    return row if row.strip() else ""


def read_lines(path: Path) -> Iterator[str]:
    """The rows of one text file, as the hub's WikiText builder reads its files (see the module docstring)."""
    with open(path, encoding="utf-8") as handle:  # text mode: universal newlines, like the builder
        for row in handle:
            yield hub_builder_line(row)


def lines_dataset(lines: Iterable[str]):
    """An in-memory ``datasets.Dataset`` with one ``text`` row per line (built in chunks, no cache files)."""
    import datasets
    import pyarrow as pa

    chunks, batch = [], []
    for line in lines:
        batch.append(line)
        if len(batch) == 1 << 16:
            chunks.append(pa.array(batch, type=pa.string()))
            batch = []
    chunks.append(pa.array(batch, type=pa.string()))
    return datasets.Dataset(pa.table({"text": pa.chunked_array(chunks, type=pa.string())}))


def check_source(source: SplitSource) -> None:
    """One-line errors for unreadable local files, before anything is computed: text files are
    checked here (present, non-empty, UTF-8); files of records when they are loaded."""
    for path in source.files:
        if path.suffix in STRUCTURED_SUFFIXES:
            if not path.is_file() or path.stat().st_size == 0:
                raise LmcollapseError(f"corpus file {path} is missing or empty: point data.corpus at records, or remove it")
        else:
            check_text_file(path)


def load_split_lines(source: SplitSource):
    """The split as an in-memory ``datasets.Dataset`` with one ``text`` row per line (breaks kept;
    whitespace-only lines as "", the hub builder's convention: see the module docstring), or per
    record of a file of records or a hub dataset (its ``text_column``); a carved split (or the
    train split it was carved from) keeps its own rows only."""
    if source.is_local and not source.structured:
        check_source(source)
        loaded = lines_dataset(line for path in source.files for line in read_lines(path))
    elif source.is_local:
        check_source(source)
        loaded = lines_dataset(hub_builder_line(row) for row in _read_record_files(source))
    else:
        import datasets

        hub_path, hub_config = source.hub  # type: ignore[misc]
        split = source.carving.source_split if source.carving else source.split
        try:
            rows = datasets.load_dataset(hub_path, hub_config, split=split)
        except Exception as err:  # offline, hub down, gated: all mean "not available here"
            reason = error_reason(err)
            if source.searched:  # a named corpus with local files somewhere
                raise LmcollapseError(
                    f"corpus {source.corpus} split {split!r} is not on disk (looked in {', '.join(source.searched)}) and "
                    f"the hub failed ({reason}): set {DATA_DIR_ENV} to a folder holding it, or run `make data` where "
                    "the network is reachable") from None
            raise LmcollapseError(
                f"corpus {source.corpus} split {split!r} could not be loaded from the hub ({reason}): check the dataset "
                "id, data.hub_config and the network, or save it to a folder of .jsonl/.parquet files and set "
                "data.corpus to that folder") from None
        # The builder's rows already follow the convention; applying it again changes nothing there
        # and holds the convention whatever form the hub serves the dataset in.
        loaded = lines_dataset(hub_builder_line(row) for row in _text_column(rows, source))
    if source.carving is not None:
        kept = source.carving.rows(len(loaded))
        if len(kept) == 0 and len(loaded) <= source.carving.parts:  # no fraction can help
            unit = "records" if source.records else "lines"
            raise LmcollapseError(
                f"the {source.carving.source_split} split of {source.corpus} has {len(loaded)} row(s) ({unit}), and "
                f"carving {source.carving.parts} split(s) from it needs at least {source.carving.parts + 1}: carving "
                "splits rows, never the text inside one, so give the corpus a held-out file of its own (e.g. "
                f"test.txt beside train.txt) or more rows ({'one record each' if source.records else 'one per line'})")
        if len(kept) == 0:
            raise LmcollapseError(
                f"carving {source.carving.parts} split(s) of {source.carving.fraction:g} from the {len(loaded)} rows of "
                f"{source.carving.source_split} leaves {source.split!r} no rows: lower data.carve_fraction")
        loaded = loaded.select(kept)
    if not any(line.strip() for line in loaded["text"]):
        raise LmcollapseError(f"corpus {source.corpus} split {source.split!r} is empty ({source.describe()})")
    return loaded


def _read_record_files(source: SplitSource) -> list[str]:
    """The text column of a split's local files of records, with one-line errors for a malformed file."""
    import datasets

    builder = STRUCTURED_SUFFIXES[source.files[0].suffix]
    # A cache of its own, gone after: the builder's shared cache (~/.cache/huggingface) is keyed on
    # path and modification time, so a file edited with its time kept was read as it was before
    # while the manifest recorded the new file's sha256; and nothing is written outside the run.
    quiet = logging.getLogger("datasets")  # its builders log a failure before raising it: our error says why
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="lmcollapse-read-") as cache:
        try:
            # CSV: "NA", "null", "None", "n/a"... are text here, not pandas' missing values
            options = {"keep_default_na": False} if builder == "csv" else {}
            rows = datasets.load_dataset(builder, data_files=[str(p) for p in source.files], split="train",
                                         keep_in_memory=True, cache_dir=cache, **options)
            texts = _text_column(rows, source)
        except LmcollapseError:
            raise
        except Exception as err:  # the builders raise many kinds for a malformed file
            while err.__cause__ is not None:  # "An error occurred while generating the dataset" hides why
                err = err.__cause__
            if isinstance(err, UnicodeDecodeError):
                # its position counts within one value or block; the file's own offset is what a user can find
                for path in source.files:
                    if path.suffix != ".parquet":  # parquet's bytes are not text; JSON's and CSV's are
                        check_utf8(path)
                raise LmcollapseError(f"corpus file(s) {source.describe()} are not UTF-8 ({err.reason} in a text "
                                      "value): save them as UTF-8") from None
            raise LmcollapseError(
                f"corpus file(s) {source.describe()} could not be read as {builder} ({error_reason(err)}): check "
                f"the format matches the suffix") from None
        finally:
            quiet.setLevel(level)
    return texts


def _text_column(rows, source: SplitSource) -> list[str]:
    """The ``text_column`` of a dataset, checked: present, and text. Where a row is a document
    (``source.records``), it ends with a line break (added where it has none, as a text file's lines
    have one), so that in the token stream one document does not run into the next for families
    that put no token between texts (GPT-2, Pythia, Qwen2). WikiText's hub rows are lines, kept as
    its builder serves them."""
    import datasets

    column = source.text_column
    if column not in rows.column_names:
        raise LmcollapseError(
            f"corpus {source.describe()} has no column {column!r} (it has {', '.join(rows.column_names) or 'none'}): "
            "set data.text_column to the column holding the text")
    feature = rows.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        # Name the first value that is not text: "holds Json(decode=True)" tells a user nothing.
        first = next(((i, v) for i, v in enumerate(rows[column]) if v is not None and not isinstance(v, str)), None)
        where = "" if first is None else \
            f"; record {first[0] + 1} holds {type(first[1]).__name__} {_shorten(repr(first[1]))}"
        raise LmcollapseError(
            f"column {column!r} of corpus {source.describe()} is not text{where}: set data.text_column to a column "
            "holding text in every record, or fix that record")
    values = list(rows[column])
    missing = next((i for i, value in enumerate(values) if value is None), None)
    if missing is not None and source.is_local:  # a record without its text: read as "", it vanished silently
        raise LmcollapseError(
            f"record {missing + 1} of corpus {source.describe()} has no {column!r} value: give every record its text, "
            "or remove the records without one")
    values = ["" if value is None else value for value in values]
    if source.records:
        values = [value if not value.strip() or value.endswith("\n") else value + "\n" for value in values]
    return values


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tokenize_lines(lines, tokenizer) -> np.ndarray:
    """Tokenize every line with the tokenizer's defaults, as the reference code does, and concatenate."""
    import pyarrow.compute as pc

    tokenized = lines.map(
        # verbose=False: lines longer than the model's context are fine, they are cut into blocks.
        lambda batch: {"input_ids": tokenizer(batch["text"], verbose=False)["input_ids"]},
        batched=True, remove_columns=lines.column_names, keep_in_memory=True,
        desc="tokenizing", load_from_cache_file=False)
    column = tokenized.data.column("input_ids").combine_chunks()
    return np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False), dtype=np.int64)


def cut_into_blocks(stream: np.ndarray, block_size: int, what: str = "corpus") -> np.ndarray:
    """Consecutive blocks of ``block_size`` tokens; the remainder (< one block) is dropped."""
    count = len(stream) // block_size
    if count == 0:
        raise LmcollapseError(
            f"the {what} has {len(stream)} tokens, fewer than one block of {block_size}: "
            "use more text or a smaller data.block_size")
    return np.asarray(stream[: count * block_size], dtype=np.int64).reshape(count, block_size)


def fetch_named_corpus(corpus: str, destination: Path) -> Path:
    """Download a named corpus's official archive into ``destination`` (needs network)."""
    import io
    import urllib.request
    import zipfile

    if corpus not in NAMED_CORPORA:
        raise LmcollapseError(f"`data` fetches named corpora only ({', '.join(NAMED_CORPORA)}); {corpus!r} is a folder")
    named = NAMED_CORPORA[corpus]
    if not named.folders:
        raise LmcollapseError(f"{corpus} is read from the hub ({named.hub_path}) only, with no archive to fetch: run "
                              "the pipeline where the hub is reachable; datasets caches it")
    target = destination / named.folders[0]
    if all((target / name).is_file() for name in named.files.values()):
        return target
    try:
        with urllib.request.urlopen(named.url, timeout=60) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except OSError as err:
        raise LmcollapseError(f"could not download {named.url} ({err}): check the network, or copy the files into {target}") from None
    for member in archive.namelist():
        name = Path(member).name
        if name in named.files.values():
            with atomic_path(target / name) as scratch:
                scratch.write_bytes(archive.read(member))
    return target
