"""Where a corpus's splits are: a named corpus in ``$LMCOLLAPSE_DATA_DIR/<folder>/``, then
``data/<folder>/``, then the Hugging Face hub; a hub dataset (``hub:owner/name``); any local
folder of text files (a split is ``<split>.txt``/``.raw``/``.tokens``, ``wiki.<split>.*``,
``<split>.jsonl``/``.json``/``.csv``/``.parquet``, or a sub-folder ``<split>/`` of such files);
or one such file, the train split. Nothing is read here (``read.py`` reads); a split the corpus
lacks can be carved from its train split (``data.carve_fraction``, ``carving.py``).

The train and held-out splits should come from one place: ``locate_splits`` prefers a folder
holding both, ``SplitSource.record()`` says where a split came from and in which format, and
``check_same_source`` refuses a pair read from two places unless ``data.mixed_sources`` is set.

    source = locate_split("wikitext-2-raw-v1", "validation")
    train, heldout = locate_splits("wikitext-2-raw-v1", "validation", "test")
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcollapse.config.corpora import HUB_PREFIX, NAMED_CORPORA
from lmcollapse.errors import LmcollapseError

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
# How a file's suffix names its kind of text (WikiText's raw and tokenized releases, plain text).
SUFFIX_KINDS = {".raw": "raw", ".tokens": "tokenized", ".txt": "text", ".jsonl": "jsonl", ".json": "json",
                ".csv": "csv", ".parquet": "parquet"}
LINE_FORMAT = ("text lines, line breaks kept, blank and whitespace-only lines as empty strings "
               "(the hub builder's convention)")
MIXED_SOURCES_FIX = ("put both splits in one folder (e.g. set LMCOLLAPSE_DATA_DIR to a folder holding both, "
                     'or run `make data`), or set SET="data.mixed_sources=true"')


class MissingSplit(LmcollapseError):
    """The corpus has no such split. Whether ``data.carve_fraction`` can give it depends on the
    config (the train split cannot be carved from itself): ``carving.locate_data_splits`` says."""

    def __init__(self, message: str, split: str):
        super().__init__(message)
        self.split = split


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
        from lmcollapse.run.seeding import rng

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
            raise MissingSplit(f"corpus {corpus} has no split {split!r}: use one of {', '.join(named.files)}", split)
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
        if path.count("/") != 1 or not all(HUB_NAME.fullmatch(part) for part in path.split("/")):
            raise LmcollapseError(f"data.corpus {corpus!r}: a hub dataset is written hub:owner/name")
        if Path(path).exists():  # datasets would read the local folder, recorded as the hub's and unhashed
            raise LmcollapseError(f"data.corpus {corpus!r} names a folder here ({path}), which would be read in the "
                                  f"hub dataset's stead: set data.corpus={path} to read that folder, or run elsewhere")
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
            raise MissingSplit(f"corpus {corpus!r} is one file, the train split: it has no {split!r} split; name a "
                               "folder holding the split", split)
        return SplitSource(corpus, split, (path,), text_column=text_column)
    if not path.is_dir():  # a FIFO, a device (/dev/null): nothing to read splits from
        raise LmcollapseError(f"corpus {corpus!r} is neither a folder nor a regular file: point data.corpus at a folder")
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


HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one part of owner/name: no "..", no path


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
        from lmcollapse.run.atomic import sha256_file

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
    _refuse_unreadable(named, split)
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
        _refuse_unreadable(entries, split)
        files = [p for p in entries if p.is_file()]
        if files:
            return _one_format(tuple(files), split)
        raise LmcollapseError(f"corpus folder {sub} has no {'/'.join(CORPUS_SUFFIXES)} files for split {split!r}")
    if candidates:
        return (candidates[0],)
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
    raise MissingSplit(
        f"corpus folder {folder} has no split {split!r}: expected {names[0]}.txt (or .raw, .tokens, .jsonl, "
        f".json, .csv, .parquet) or a folder {names[0]}/ of such files; it holds {present}", split)


def _refuse_unreadable(paths: list[Path], split: str) -> None:
    """A corpus file name that is not a regular file is named, never skipped: a folder called
    ``test.txt``, or a FIFO, a socket or a device (read once, never hashed)."""
    for path in paths:
        if path.is_dir():
            raise LmcollapseError(f"corpus file {path} is a folder: the {split!r} split is one file {path.name}, or a "
                                  f"folder of files named {split}/; rename it")
        if path.exists() and not path.is_file():
            raise LmcollapseError(f"corpus file {path} is not a regular file (a FIFO, a socket or a device), so it "
                                  "cannot be read twice or hashed: replace it with a file of the text")


def _one_format(files: tuple[Path, ...], split: str) -> tuple[Path, ...]:
    """The files of a split are all lines of text, or all records of one format."""
    formats = {STRUCTURED_SUFFIXES.get(p.suffix, "text") for p in files}
    if len(formats) > 1:
        shown = ", ".join(p.name for p in files[:6]) + (", ..." if len(files) > 6 else "")
        raise LmcollapseError(
            f"split {split!r} mixes file formats ({', '.join(sorted(formats))} in {files[0].parent}: {shown}): keep "
            "one format per split")
    return files
