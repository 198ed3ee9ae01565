"""The human corpus and what each generation trains on.

Where a corpus's splits are (``locate``), reading and tokenizing them (``read``), the splits a
pipeline reads located once per command (``corpus.CorpusPlan``), text records with provenance
(``records``) and the data regimes (``regimes``). The corpus functions are re-exported here:

    from lmcollapse import data
    source = data.locate_split("wikitext-2-raw-v1", "validation")
    lines = data.load_split_lines(source)
"""

from lmcollapse.data.carving import locate_data_splits
from lmcollapse.data.locate import (
    CORPUS_SUFFIXES,
    DATA_DIR_ENV,
    SPLIT_ALIASES,
    Carving,
    MissingSplit,
    SplitSource,
    check_same_source,
    data_roots,
    locate_split,
    locate_splits,
    same_text,
)
from lmcollapse.data.read import (
    check_source,
    check_text_file,
    cut_into_blocks,
    fetch_named_corpus,
    hub_builder_line,
    lines_dataset,
    load_split_lines,
    read_lines,
    tokenize_lines,
)

__all__ = ["CORPUS_SUFFIXES", "DATA_DIR_ENV", "SPLIT_ALIASES", "Carving", "MissingSplit", "SplitSource",
           "check_same_source", "check_source", "check_text_file", "cut_into_blocks", "data_roots",
           "fetch_named_corpus", "hub_builder_line", "lines_dataset", "load_split_lines", "locate_data_splits",
           "locate_split", "locate_splits", "read_lines", "same_text", "tokenize_lines"]
