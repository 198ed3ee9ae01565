"""The human corpus: find it, check it, load it with ``datasets``, cut it into token blocks.

A named corpus (``wikitext-2-raw-v1``) is looked up in ``$LMCOLLAPSE_DATA_DIR/<folder>/``, then
``data/<folder>/``, then on the Hugging Face hub; any local folder of text files can be named
instead (a split is ``<split>.txt``/``.raw``/``.tokens``, ``wiki.<split>.*``, or a sub-folder
``<split>/`` of such files). Files are checked before use: present, non-empty, UTF-8.

    source = locate_split("wikitext-2-raw-v1", "validation")
    lines = load_split_lines(source)                       # a datasets.Dataset of lines
    blocks = cut_into_blocks(tokenize_lines(lines, tokenizer), 64)
"""

from __future__ import annotations

import codecs
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcollapse.atomic import atomic_path
from lmcollapse.errors import LmcollapseError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "LMCOLLAPSE_DATA_DIR"
TEXT_SUFFIXES = (".txt", ".raw", ".tokens")
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


@dataclass(frozen=True)
class NamedCorpus:
    folders: tuple[str, ...]  # where it lives under a data root, in order of preference
    files: dict[str, str]  # split -> file name, as in the official archive
    hub_path: str
    hub_config: str
    url: str  # the official archive, for `lmcollapse data`
    sizes: dict[str, int]  # bytes per split in the official archive: plans before any download


NAMED_CORPORA: dict[str, NamedCorpus] = {
    "wikitext-2-raw-v1": NamedCorpus(
        ("wikitext-2-raw",),
        {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"},
        "Salesforce/wikitext", "wikitext-2-raw-v1",
        "https://wikitext.smerity.com/wikitext-2-raw-v1.zip",
        {"train": 10_940_747, "validation": 1_146_846, "test": 1_290_590}),
    # The tokenized release (rare words replaced by <unk>): the full-size train split.
    "wikitext-2-v1": NamedCorpus(
        ("wikitext-2", "wikitext-2-raw/tokenized-fallback-wikitext-2-v1"),
        {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"},
        "Salesforce/wikitext", "wikitext-2-v1",
        "https://wikitext.smerity.com/wikitext-2-v1.zip",
        {"train": 10_797_148, "validation": 1_121_681, "test": 1_256_449}),
}


@dataclass(frozen=True)
class SplitSource:
    """Where one split of a corpus comes from: local files, or the hub."""

    corpus: str
    split: str
    files: tuple[Path, ...] = ()
    hub: tuple[str, str] | None = None
    searched: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        return bool(self.files)

    def describe(self) -> str:
        if self.files:
            return ", ".join(str(f) for f in self.files)
        return f"hub {self.hub[0]} ({self.hub[1]}), not found locally" if self.hub else "nowhere"


def data_roots() -> list[Path]:
    """Folders searched for named corpora: $LMCOLLAPSE_DATA_DIR, then ./data."""
    roots = []
    if os.environ.get(DATA_DIR_ENV):
        roots.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    roots.append(Path("data"))
    return roots


def locate_split(corpus: str, split: str) -> SplitSource:
    """Resolve ``corpus``/``split`` to files (or the hub) without reading them."""
    if corpus in NAMED_CORPORA:
        named = NAMED_CORPORA[corpus]
        if split not in named.files:
            raise LmcollapseError(
                f"corpus {corpus} has no split {split!r}: use one of {', '.join(named.files)}")
        searched = []
        for root in data_roots():
            for folder in named.folders:
                candidate = root / folder / named.files[split]
                searched.append(str(candidate))
                if candidate.is_file():
                    return SplitSource(corpus, split, (candidate,))
        return SplitSource(corpus, split, hub=(named.hub_path, named.hub_config), searched=tuple(searched))
    folder = Path(corpus).expanduser()
    if not folder.exists():
        raise LmcollapseError(
            f"corpus {corpus!r} not found: it is neither a named corpus ({', '.join(NAMED_CORPORA)}) "
            "nor an existing folder; fix data.corpus")
    if not folder.is_dir():
        raise LmcollapseError(f"corpus {corpus!r} is a file: data.corpus must name a folder of text files")
    return SplitSource(corpus, split, _split_files_in_folder(folder, split))


def _split_files_in_folder(folder: Path, split: str) -> tuple[Path, ...]:
    names = SPLIT_ALIASES.get(split, (split,))
    for name in names:
        sub = folder / name
        if sub.is_dir():
            files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if files:
                return tuple(files)
            raise LmcollapseError(f"corpus folder {sub} has no {'/'.join(TEXT_SUFFIXES)} files for split {split!r}")
    for name in names:
        for prefix in ("", "wiki."):
            for suffix in TEXT_SUFFIXES:
                candidate = folder / f"{prefix}{name}{suffix}"
                if candidate.is_file():
                    return (candidate,)
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
    raise LmcollapseError(
        f"corpus folder {folder} has no split {split!r}: expected {names[0]}.txt (or .raw, .tokens) "
        f"or a folder {names[0]}/ of text files; it holds {present}")


def check_text_file(path: Path) -> None:
    """Raise a one-line error unless ``path`` is a non-empty UTF-8 text file."""
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


def load_split_lines(source: SplitSource):
    """The split as an in-memory ``datasets.Dataset`` with one ``text`` row per line (breaks kept)."""
    import datasets

    if source.is_local:
        for path in source.files:
            check_text_file(path)
        # The text builder prepares an Arrow cache; a throwaway one keeps runs and ~/.cache clean.
        with tempfile.TemporaryDirectory(prefix="lmcollapse-text-") as scratch:
            loaded = datasets.load_dataset(
                "text", data_files={"lines": [str(p) for p in source.files]}, split="lines",
                keep_linebreaks=True, cache_dir=scratch, keep_in_memory=True)
    else:
        hub_path, hub_config = source.hub  # type: ignore[misc]
        try:
            loaded = datasets.load_dataset(hub_path, hub_config, split=source.split)
        except Exception as err:  # offline, hub down, gated: all mean "not available here"
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise LmcollapseError(
                f"corpus {source.corpus} split {source.split!r} is not on disk (looked in "
                f"{', '.join(source.searched)}) and the hub failed ({reason}): set {DATA_DIR_ENV} "
                "to a folder holding it, or run `make data` where the network is reachable") from None
    if not any(line.strip() for line in loaded["text"]):
        raise LmcollapseError(f"corpus {source.corpus} split {source.split!r} is empty ({source.describe()})")
    return loaded


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
