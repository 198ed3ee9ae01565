r"""The human corpus: find it, check it, load it, cut it into token blocks.

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

The train and held-out splits should come from one place: ``locate_splits`` prefers a folder
holding both, ``SplitSource.record()`` says where a split came from and in which format, and
``check_same_source`` refuses a pair read from two places unless ``data.mixed_sources`` is set.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcollapse.atomic import atomic_path
from lmcollapse.errors import LmcollapseError, error_reason

log = logging.getLogger(__name__)

DATA_DIR_ENV = "LMCOLLAPSE_DATA_DIR"
TEXT_SUFFIXES = (".txt", ".raw", ".tokens")
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
# Files of records, read with datasets' own builder; each record's data.text_column is one row.
STRUCTURED_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
CORPUS_SUFFIXES = TEXT_SUFFIXES + tuple(STRUCTURED_SUFFIXES)
HUB_PREFIX = "hub:"
# How a file's suffix names its kind of text (WikiText's raw and tokenized releases, plain text).
SUFFIX_KINDS = {".raw": "raw", ".tokens": "tokenized", ".txt": "text", ".jsonl": "jsonl", ".json": "json",
                ".csv": "csv", ".parquet": "parquet"}
LINE_FORMAT = ("text lines, line breaks kept, blank and whitespace-only lines as empty strings "
               "(the hub builder's convention)")
MIXED_SOURCES_FIX = ("put both splits in one folder (e.g. set LMCOLLAPSE_DATA_DIR to a folder holding both, "
                     'or run `make data`), or set SET="data.mixed_sources=true"')


@dataclass(frozen=True)
class NamedCorpus:
    folders: tuple[str, ...]  # where it lives under a data root, in order of preference (none: hub only)
    files: dict[str, str]  # split -> file name, as in the official archive (hub only: split -> "")
    hub_path: str
    hub_config: str | None
    url: str  # the official archive, for `lmcollapse data` ("": none)
    sizes: dict[str, int]  # bytes per split in the official archive: plans before any download
    kind: str = "text"  # "raw" (original text) or "tokenized" (rare words replaced by <unk>)
    family: str = ""  # corpora whose same-named splits hold the same text share it
    text_column: str = "text"
    licence: str = ""  # the hub's licence id, inherited by every dataset card a run writes
    records: bool = False  # a row is a document (a line break is added where it has none), not a line


NAMED_CORPORA: dict[str, NamedCorpus] = {
    "wikitext-2-raw-v1": NamedCorpus(
        ("wikitext-2-raw",),
        {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"},
        "Salesforce/wikitext", "wikitext-2-raw-v1",
        "https://wikitext.smerity.com/wikitext-2-raw-v1.zip",
        {"train": 10_940_747, "validation": 1_146_846, "test": 1_290_590}, kind="raw", family="wikitext", licence="cc-by-sa-3.0"),
    # The tokenized release (rare words replaced by <unk>): the full-size train split.
    "wikitext-2-v1": NamedCorpus(
        ("wikitext-2", "wikitext-2-raw/tokenized-fallback-wikitext-2-v1"),
        {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"},
        "Salesforce/wikitext", "wikitext-2-v1",
        "https://wikitext.smerity.com/wikitext-2-v1.zip",
        {"train": 10_797_148, "validation": 1_121_681, "test": 1_256_449}, kind="tokenized",
        family="wikitext", licence="cc-by-sa-3.0"),
    # WikiText-103: its validation and test splits are WikiText-2's, its train split holds WikiText-2's
    # train articles and many more (Merity et al. 2016): one family, so same-named splits share text.
    "wikitext-103-raw-v1": NamedCorpus(
        ("wikitext-103-raw",),
        {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"},
        "Salesforce/wikitext", "wikitext-103-raw-v1",
        "https://wikitext.smerity.com/wikitext-103-raw-v1.zip", {}, kind="raw", family="wikitext", licence="cc-by-sa-3.0"),
    # TinyStories (Eldan and Li 2023): one story per hub row, so read from the hub only (its text
    # files separate stories by <|endoftext|> lines, which line-by-line reading would not keep).
    "tinystories": NamedCorpus(
        (), {"train": "", "validation": ""}, "roneneldan/TinyStories", None, "", {}, family="tinystories",
        licence="cdla-sharing-1.0", records=True),
}


class MissingSplit(LmcollapseError):
    """The corpus has no such split (``data.carve_fraction`` can carve it from the train split)."""


@dataclass(frozen=True)
class Carving:
    """The rows of a split carved from the train split of a corpus that lacks it
    (``data.carve_fraction``). The train split's rows are ranked by a permutation seeded with
    ``seed``; carved split number ``part`` holds ranks [part * k, (part + 1) * k), k =
    max(1, round(fraction * rows)), and the train split keeps the ranks from ``parts * k`` on
    (``part`` None). Rows keep their order in the file."""

    source_split: str
    fraction: float
    seed: int
    part: int | None
    parts: int

    def rows(self, count: int) -> np.ndarray:
        from lmcollapse.seeding import rng

        size = max(1, round(self.fraction * count))
        rank = np.empty(count, dtype=np.int64)
        rank[rng(self.seed, "carve", self.source_split).permutation(count)] = np.arange(count)
        if self.part is None:
            chosen = rank >= self.parts * size
        else:
            chosen = (rank >= self.part * size) & (rank < (self.part + 1) * size)
        return np.flatnonzero(chosen)


@dataclass(frozen=True)
class SplitSource:
    """Where one split of a corpus comes from: local files, or the hub; which column holds the
    text (files of records and hub datasets); and, for a carved split, which rows."""

    corpus: str
    split: str
    files: tuple[Path, ...] = ()
    hub: tuple[str, str | None] | None = None
    searched: tuple[str, ...] = ()
    text_column: str = "text"
    carving: Carving | None = None

    @property
    def structured(self) -> bool:
        """Files of records (JSON lines, JSON, CSV, Parquet) rather than lines of text."""
        return bool(self.files) and self.files[0].suffix in STRUCTURED_SUFFIXES

    @property
    def records(self) -> bool:
        """Each row a document (files of records, hub datasets, TinyStories), not a line of text."""
        if self.corpus in NAMED_CORPORA:
            return NAMED_CORPORA[self.corpus].records
        return self.structured or not self.files

    @property
    def is_local(self) -> bool:
        return bool(self.files)

    def describe(self) -> str:
        carved = "" if self.carving is None else (
            f" (rows carved from its {self.carving.source_split} split, {self.carving.fraction:g} of them, "
            f"seed {self.carving.seed})" if self.carving.part is not None else
            f" (less the rows carved from it for {self.carving.parts} missing split(s))")
        if self.files:
            return ", ".join(str(f) for f in self.files) + carved
        if self.hub and self.corpus.startswith(HUB_PREFIX):
            return f"hub {self.hub[0]}" + (f" ({self.hub[1]})" if self.hub[1] else "") + carved
        if self.hub:
            return f"hub {self.hub[0]}" + (f" ({self.hub[1]})" if self.hub[1] else "") + ", not found locally" + carved
        return "nowhere"

    @property
    def folder(self) -> Path | None:
        """The folder the split was found in: a named corpus's data folder, or the corpus folder
        itself (also when the split is a sub-folder ``<split>/`` of it); None for the hub."""
        if not self.files:
            return None
        if self.corpus in NAMED_CORPORA:
            return self.files[0].parent
        path = Path(self.corpus).expanduser()
        return path.parent if path.is_file() else path

    @property
    def kind(self) -> str:
        """``raw``, ``tokenized`` or ``text``: the release of a named corpus, else the files'
        suffixes (several kinds joined by ``+``)."""
        if self.corpus in NAMED_CORPORA:
            return NAMED_CORPORA[self.corpus].kind
        return "+".join(sorted({SUFFIX_KINDS.get(p.suffix, "text") for p in self.files})) or "text"

    def record(self) -> dict:
        """JSON-serialisable provenance: where the split came from and in which format.

        ``origin`` is ``"local"`` (``files``: absolute paths, in reading order; ``hub``: None) or
        ``"hub"`` (``hub``: {"path", "config"}; ``files``: []); ``format`` is the line convention
        every split is read with; ``kind`` the release (``raw``, ``tokenized``) or kind of text.
        """
        return {
            "corpus": self.corpus,
            "split": self.split,
            "origin": "local" if self.is_local else "hub",
            "files": [str(p.resolve()) for p in self.files],
            "hub": {"path": self.hub[0], "config": self.hub[1]} if self.hub else None,
            "format": (f"one row per record, its {self.text_column!r} field, ending with a line break"
                       if self.records else LINE_FORMAT),
            "kind": self.kind,
            **({"text_column": self.text_column} if self.structured or not self.files else {}),
            **({"carved": dataclasses.asdict(self.carving)} if self.carving else {}),
        }

    def where(self) -> str:
        """Where the split is read from, in a few words, for messages."""
        if self.is_local:
            return f"local files in {self.folder}"
        return f"the hub ({self.hub[0]}, {self.hub[1]}; not found locally)" if self.hub else "nowhere"


def data_roots() -> list[Path]:
    """Folders searched for named corpora: $LMCOLLAPSE_DATA_DIR, then ./data."""
    roots = []
    if os.environ.get(DATA_DIR_ENV):
        root = Path(os.environ[DATA_DIR_ENV]).expanduser()
        if root.exists() and not root.is_dir():
            raise LmcollapseError(f"{DATA_DIR_ENV}={root} is a file, not a folder: set it to the folder that holds "
                                  "the corpus folders (e.g. the folder holding wikitext-2-raw/)")
        roots.append(root)
    roots.append(Path("data"))
    return roots


def is_broken_link(path: Path) -> bool:
    """A symbolic link that leads nowhere: to a missing file, or around a loop back to itself."""
    return path.is_symlink() and not path.exists()


def broken_link_error(path: Path, fix: str = "point it at a file, or remove it") -> LmcollapseError:
    return LmcollapseError(f"corpus file {path} is a broken or looping symbolic link (it leads to no file): {fix}")


def locate_split(corpus: str, split: str, text_column: str = "text", hub_config: str | None = None) -> SplitSource:
    """Resolve ``corpus``/``split`` to files (or the hub) without reading them; ``MissingSplit``
    where the corpus is found but has no such split."""
    if corpus in NAMED_CORPORA:
        named = NAMED_CORPORA[corpus]
        if split not in named.files:
            raise MissingSplit(
                f"corpus {corpus} has no split {split!r}: use one of {', '.join(named.files)}, or set "
                f"data.carve_fraction (e.g. 0.05) to carve it from the train split")
        searched = []
        for root in data_roots():
            for folder in named.folders:
                candidate = root / folder / named.files[split]
                searched.append(str(candidate))
                if is_broken_link(candidate):
                    raise broken_link_error(candidate, f"point it at the {split} file, or remove it")
                if candidate.is_file():
                    return SplitSource(corpus, split, (candidate,), text_column=named.text_column)
        return SplitSource(corpus, split, hub=(named.hub_path, named.hub_config), searched=tuple(searched),
                           text_column=named.text_column)
    if corpus.startswith(HUB_PREFIX):
        path = corpus[len(HUB_PREFIX):]
        if path.count("/") != 1 or not all(path.split("/")):
            raise LmcollapseError(f"data.corpus {corpus!r}: a hub dataset is written hub:owner/name")
        return SplitSource(corpus, split, hub=(path, hub_config), text_column=text_column)
    path = Path(corpus).expanduser()
    if is_broken_link(path):
        raise LmcollapseError(f"corpus {corpus!r} is a broken or looping symbolic link (it leads to no file or folder): "
                              "point data.corpus at the folder or file itself")
    if not path.exists():
        raise LmcollapseError(
            f"corpus {corpus!r} not found: it is neither a named corpus ({', '.join(NAMED_CORPORA)}), "
            f"a hub dataset ({HUB_PREFIX}owner/name) nor an existing folder or file; fix data.corpus")
    if path.is_file():
        if path.suffix not in CORPUS_SUFFIXES:
            raise LmcollapseError(
                f"corpus file {corpus!r} is not one of {', '.join(CORPUS_SUFFIXES)}: name a folder of such files, "
                "or a file with one of these suffixes")
        if split not in SPLIT_ALIASES["train"]:
            raise MissingSplit(
                f"corpus {corpus!r} is one file, the train split: it has no {split!r} split; set "
                "data.carve_fraction (e.g. 0.05) to carve it from the file, or name a folder holding the split")
        return SplitSource(corpus, split, (path,), text_column=text_column)
    return SplitSource(corpus, split, _split_files_in_folder(path, split), text_column=text_column)


def locate_splits(corpus: str, *splits: str, text_column: str = "text",
                  hub_config: str | None = None) -> tuple[SplitSource, ...]:
    """Locate several splits of one corpus (e.g. train and held-out), from one folder if one holds them all.

    For a named corpus the first data folder, in ``locate_split``'s search order, holding every
    split's file wins (so a ``$LMCOLLAPSE_DATA_DIR`` with only the validation and test files does not
    split a pair with ``data/``, where ``make data`` put all three); when none holds them all, each
    split is located on its own, as ``locate_split`` does, and ``check_same_source`` says so. A
    folder corpus is one folder already.
    """
    if corpus in NAMED_CORPORA:
        named = NAMED_CORPORA[corpus]
        for split in splits:
            if split not in named.files:
                locate_split(corpus, split)  # raises MissingSplit
        for root in data_roots():
            for folder in named.folders:
                candidates = [root / folder / named.files[split] for split in splits]
                if all(candidate.is_file() for candidate in candidates):
                    return tuple(SplitSource(corpus, split, (candidate,), text_column=named.text_column)
                                 for split, candidate in zip(splits, candidates, strict=True))
    return tuple(locate_split(corpus, split, text_column, hub_config) for split in splits)


def locate_data_splits(config, *splits: str) -> tuple[SplitSource, ...]:
    """``locate_splits`` for the fine-tuning corpus of ``config`` (a ``PipelineConfig``): its text
    column and hub config, and, with ``data.carve_fraction``, the held-out split (and, with
    ``train.select: best-validation``, the validation split) the corpus lacks carved from its train
    split, and the train split without those rows. Which splits are carved does not depend on which
    are asked for, so every caller sees one partition."""
    data = config.data
    options = dict(text_column=data.text_column, hub_config=data.hub_config)
    if not data.carve_fraction:
        return locate_splits(data.corpus, *splits, **options)
    wanted = [data.heldout_split]
    if config.train.select == "best-validation" and data.validation_split not in (None, data.train_split):
        wanted.append(data.validation_split)
    missing = [split for split in wanted if not _has_split(data, split, options)]
    present = [s for s in splits if s not in missing]
    located = dict(zip(present, locate_splits(data.corpus, *present, **options))) if present else {}
    if missing and data.train_split not in located:
        (located[data.train_split],) = locate_splits(data.corpus, data.train_split, **options)
    sources = []
    for split in splits:
        if split in missing:
            carving = Carving(data.train_split, data.carve_fraction, data.subset_seed, missing.index(split), len(missing))
            sources.append(dataclasses.replace(located[data.train_split], split=split, carving=carving))
        elif split == data.train_split and missing:
            carving = Carving(data.train_split, data.carve_fraction, data.subset_seed, None, len(missing))
            sources.append(dataclasses.replace(located[split], carving=carving))
        else:
            sources.append(located[split])
    return tuple(sources)


def _has_split(data, split: str, options: dict) -> bool:
    """Whether the corpus has ``split``: by its files, its table entry, or (a hub dataset) the
    split names the hub, or datasets' cache, gives."""
    if data.corpus.startswith(HUB_PREFIX) and data.corpus not in NAMED_CORPORA:
        import datasets

        path = data.corpus[len(HUB_PREFIX):]
        try:
            return split in datasets.get_dataset_split_names(path, data.hub_config)
        except Exception as err:  # offline, unknown id, gated
            reason = error_reason(err)
            raise LmcollapseError(
                f"data.carve_fraction: the splits of {data.corpus} could not be listed ({reason}): run where the hub is "
                "reachable, or set data.heldout_split to a split the dataset has") from None
    try:
        locate_splits(data.corpus, split, **options)
    except MissingSplit:
        return False
    return True


def same_text(a: SplitSource, b: SplitSource) -> bool:
    """Whether two splits may hold the same text: one split of two releases of a named corpus (the
    raw and tokenized WikiText-2, WikiText-103), one split of one hub dataset, or local splits that
    share a file (by content). A carved split counts as the split its rows come from."""
    split_a = a.carving.source_split if a.carving else a.split
    split_b = b.carving.source_split if b.carving else b.split
    if a.corpus in NAMED_CORPORA and b.corpus in NAMED_CORPORA:
        return NAMED_CORPORA[a.corpus].family == NAMED_CORPORA[b.corpus].family and split_a == split_b
    if a.hub and b.hub and not a.files and not b.files:
        return a.hub == b.hub and split_a == split_b
    if a.files and b.files:
        from lmcollapse.atomic import sha256_file

        return bool({sha256_file(p) for p in a.files} & {sha256_file(p) for p in b.files})
    return False


def check_same_source(train: SplitSource, heldout: SplitSource, allow_mixed: bool) -> None:
    """Refuse (one line: the problem and the fix) a train and a held-out split read from two places.

    Two places: one split from local files and the other from the hub, local files in two
    different folders, or two different hub datasets. ``allow_mixed`` (``data.mixed_sources``)
    lets such a pair through.
    """
    if allow_mixed:
        return
    if train.is_local and heldout.is_local:
        same = train.folder.resolve() == heldout.folder.resolve()  # type: ignore[union-attr]
    else:
        same = train.is_local == heldout.is_local and train.hub == heldout.hub
    if not same:
        raise LmcollapseError(
            f"the train split {train.split!r} of {train.corpus} comes from {train.where()} but the held-out "
            f"split {heldout.split!r} of {heldout.corpus} from {heldout.where()}, and one corpus read from "
            f"two places can differ: {MIXED_SOURCES_FIX}")


def _split_files_in_folder(folder: Path, split: str) -> tuple[Path, ...]:
    """The files of ``split`` in a corpus folder: one file ``<split>.<suffix>`` (or ``wiki.<split>.*``),
    or one sub-folder ``<split>/`` of files of one format. Two candidates for one split (``train.txt``
    beside ``train.jsonl``, a file beside a sub-folder) are refused: picking one would be a guess."""
    names = SPLIT_ALIASES.get(split, (split,))
    folders = [folder / name for name in names if (folder / name).is_dir()]
    named = [folder / f"{prefix}{name}{suffix}" for name in names for prefix in ("", "wiki.") for suffix in CORPUS_SUFFIXES]
    broken = [path for path in named if is_broken_link(path)]
    if broken:
        raise broken_link_error(broken[0])
    candidates = folders + [path for path in named if path.is_file()]
    if len(candidates) > 1:
        shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in candidates)
        raise LmcollapseError(
            f"corpus folder {folder} has {len(candidates)} candidates for split {split!r} ({shown}): keep one of them "
            "(move the others out of the folder); a split is one file, or one folder of files of one format")
    if folders:
        sub = folders[0]
        entries = sorted(p for p in sub.iterdir() if p.suffix in CORPUS_SUFFIXES)
        broken = [path for path in entries if is_broken_link(path)]
        if broken:
            raise broken_link_error(broken[0])
        files = [p for p in entries if p.is_file()]
        if files:
            return _one_format(tuple(files), split)
        raise LmcollapseError(f"corpus folder {sub} has no {'/'.join(CORPUS_SUFFIXES)} files for split {split!r}")
    if candidates:
        return (candidates[0],)
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
    raise MissingSplit(
        f"corpus folder {folder} has no split {split!r}: expected {names[0]}.txt (or .raw, .tokens, .jsonl, "
        f".json, .csv, .parquet) or a folder {names[0]}/ of such files; it holds {present} (or set "
        "data.carve_fraction to carve the split from the train split)")


def _one_format(files: tuple[Path, ...], split: str) -> tuple[Path, ...]:
    """The files of a split are all lines of text, or all records of one format."""
    formats = {STRUCTURED_SUFFIXES.get(p.suffix, "text") for p in files}
    if len(formats) > 1:
        shown = ", ".join(p.name for p in files[:6]) + (", ..." if len(files) > 6 else "")
        raise LmcollapseError(
            f"split {split!r} mixes file formats ({', '.join(sorted(formats))} in {files[0].parent}: {shown}): keep "
            "one format per split")
    return files


def check_text_file(path: Path) -> None:
    """Raise a one-line error unless ``path`` is a non-empty UTF-8 text file."""
    if is_broken_link(path):
        raise broken_link_error(path)
    if not path.is_file():
        raise LmcollapseError(f"corpus file {path} not found: check data.corpus and {DATA_DIR_ENV}")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    has_text = False
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise LmcollapseError(
                    f"corpus file {path} is not UTF-8 (invalid byte 0x{chunk[err.start]:02x} at offset "
                    f"{offset + err.start}): re-encode it as UTF-8, e.g. iconv -t UTF-8") from None
            has_text = has_text or bool(text.strip())
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise LmcollapseError(
                f"corpus file {path} is not UTF-8 (truncated character at the end): re-encode it as UTF-8") from None
    if offset == 0 or not has_text:
        raise LmcollapseError(f"corpus file {path} is empty: point data.corpus at text, or remove the file")


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
        import datasets

        builder = STRUCTURED_SUFFIXES[source.files[0].suffix]
        try:
            rows = datasets.load_dataset(builder, data_files=[str(p) for p in source.files], split="train",
                                         keep_in_memory=True)
        except Exception as err:  # the builders raise many kinds for a malformed file
            reason = error_reason(err)
            raise LmcollapseError(
                f"corpus file(s) {source.describe()} could not be read as {builder} ({reason}): check the format "
                f"matches the suffix") from None
        loaded = lines_dataset(hub_builder_line(row) for row in _text_column(rows, source))
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
    values = ["" if value is None else value for value in rows[column]]
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
