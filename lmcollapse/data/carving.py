"""The splits a pipeline's fine-tuning corpus is read from, with ``data.carve_fraction``: the
held-out split (and, under ``train.select: best-validation``, the validation split) a corpus lacks,
carved from its train split (``locate.Carving`` says which rows), and the train split without them.

    train, heldout = locate_data_splits(config, "train", "test")

A fraction that would carve nothing (the corpus has every such split) is refused rather than
ignored (``check_carves_something``, for a new run); without one, a missing split that could be
carved says so.
"""

from __future__ import annotations

import dataclasses

from lmcollapse.config.corpora import HUB_PREFIX, NAMED_CORPORA
from lmcollapse.data.locate import Carving, MissingSplit, SplitSource, locate_splits
from lmcollapse.errors import LmcollapseError, error_reason


def separate_validation_split(config) -> str | None:
    """The split validation blocks come from when it is not the train split (best-validation only)."""
    split = config.data.validation_split
    if config.train.select != "best-validation" or split in (None, config.data.train_split):
        return None
    return split


def carvable_splits(config) -> list[str]:
    """The splits ``data.carve_fraction`` carves where the corpus lacks them, in carving order."""
    validation = separate_validation_split(config)
    return [config.data.heldout_split] + ([validation] if validation else [])


def locate_data_splits(config, *splits: str) -> tuple[SplitSource, ...]:
    """``locate_splits`` for the fine-tuning corpus of ``config`` (a ``PipelineConfig``): its text
    column and hub config, and, with ``data.carve_fraction``, the carvable splits the corpus lacks
    carved from its train split, and the train split without those rows. Which splits are carved
    does not depend on which are asked for, so every caller sees one partition."""
    data = config.data
    options = dict(text_column=data.text_column, hub_config=data.hub_config)
    wanted = carvable_splits(config)
    if not data.carve_fraction:
        try:
            return locate_splits(data.corpus, *splits, **options)
        except MissingSplit as err:
            if err.split not in wanted:  # the train split cannot be carved from itself
                raise
            raise MissingSplit(f"{err}; or set data.carve_fraction (e.g. 0.05) to carve it from the train split "
                               f"{data.train_split!r}", err.split) from None
    (train,) = locate_splits(data.corpus, data.train_split, **options)  # what everything is carved from
    missing = [split for split in wanted if not _has_split(data, split, options)]
    if not missing:  # nothing to carve: a new run refuses the fraction (check_carves_something), an older run read so
        return locate_splits(data.corpus, *splits, **options)
    present = [s for s in splits if s not in missing]
    located = dict(zip(present, locate_splits(data.corpus, *present, **options))) if present else {}
    located.setdefault(data.train_split, train)  # a named corpus's folder holding every split asked for wins
    sources = []
    for split in splits:
        if split in missing:
            carving = Carving(data.train_split, data.carve_fraction, data.subset_seed, missing.index(split), len(missing))
            sources.append(dataclasses.replace(located[data.train_split], split=split, carving=carving))
        elif split == data.train_split:
            carving = Carving(data.train_split, data.carve_fraction, data.subset_seed, None, len(missing))
            sources.append(dataclasses.replace(located[split], carving=carving))
        else:
            sources.append(located[split])
    return tuple(sources)


def check_carves_something(config) -> None:
    """A ``data.carve_fraction`` that would carve nothing (the corpus has every carvable split) is
    refused, not ignored; checked before a run's human stage is built (a run built earlier with one
    goes on as it was built)."""
    data = config.data
    if not data.carve_fraction:
        return
    options = dict(text_column=data.text_column, hub_config=data.hub_config)
    wanted = carvable_splits(config)
    if all(_has_split(data, split, options) for split in wanted):
        raise LmcollapseError(
            f"data.carve_fraction={data.carve_fraction:g} would carve nothing: corpus {data.corpus} has its own "
            f"{' and '.join(repr(split) for split in wanted)} split{'s' if len(wanted) > 1 else ''}: leave "
            "data.carve_fraction out (or set it to null)")


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
