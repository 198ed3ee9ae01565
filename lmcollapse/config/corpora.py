"""The named corpora ``data.corpus`` accepts: where each lives on disk and on the hub, its splits,
its sizes (plans before any download), its kind of text, its release family and its licence.

    NAMED_CORPORA["wikitext-2-raw-v1"].files["validation"]     # "wiki.valid.raw"

A config checks ``data.corpus`` against this catalogue; ``lmcollapse.data`` locates and reads
the files it names.
"""

from __future__ import annotations

from dataclasses import dataclass

HUB_PREFIX = "hub:"  # data.corpus=hub:owner/name names a hub dataset


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
