"""The text a pipeline reads, located once per command: the fine-tuning corpus's train and
held-out splits, its validation split where ``train.select=best-validation`` takes one of its
own, and the pretraining split of a preset base. Each is located the first time it is asked
for, so a complete run never looks for its corpus; preflight checks the plan, and the stages
read the splits it located.

    corpus = CorpusPlan(config)
    corpus.check_fine_tuning_text()          # found in one place, readable: one-line errors otherwise
    corpus.check_settings_read()             # no setting accepted and ignored
    lines = load_split_lines(corpus.train)
"""

from __future__ import annotations

from functools import cached_property

from lmcollapse.config import PipelineConfig
from lmcollapse.data.carving import check_carves_something, locate_data_splits, separate_validation_split
from lmcollapse.data.locate import SplitSource, check_same_source, locate_splits, same_text
from lmcollapse.data.read import check_source
from lmcollapse.errors import LmcollapseError


class CorpusPlan:
    """Where ``config``'s text comes from; see the module docstring."""

    def __init__(self, config: PipelineConfig):
        self.config = config

    @cached_property
    def _fine_tuning(self) -> tuple[SplitSource, SplitSource]:
        data = self.config.data
        return locate_data_splits(self.config, data.train_split, data.heldout_split)

    @property
    def train(self) -> SplitSource:
        return self._fine_tuning[0]

    @property
    def heldout(self) -> SplitSource:
        return self._fine_tuning[1]

    @cached_property
    def validation(self) -> SplitSource | None:
        """The validation split of its own (``data.validation_split``), or None: validation blocks
        are then the train split's blocks outside the training subset."""
        split = separate_validation_split(self.config)
        return None if split is None else locate_data_splits(self.config, split)[0]

    @cached_property
    def pretraining(self) -> SplitSource | None:
        """The split a preset base is pretrained on, or None when nothing is pretrained."""
        settings = self.config.pretrain
        return locate_splits(settings.corpus, settings.split)[0] if settings.enabled else None

    def check_fine_tuning_text(self) -> None:
        """The train, held-out (and validation) splits are found, in one place, and readable (not yet loaded)."""
        allow_mixed = self.config.data.mixed_sources
        check_same_source(self.train, self.heldout, allow_mixed=allow_mixed)
        if self.validation is not None:
            check_same_source(self.train, self.validation, allow_mixed=allow_mixed)
        for source in (self.train, self.heldout, self.validation):
            if source is not None:
                check_source(source)
        data = self.config.data
        # Two names for one text (an alias, a copied file): held-out text would be trained on, or select a model.
        for key, split, other in (("data.train_split", data.train_split, self.train),
                                  ("data.validation_split", data.validation_split, self.validation)):
            if other is not None and not other.carving and not self.heldout.carving and same_text(other, self.heldout):
                raise LmcollapseError(
                    f"data.heldout_split: {data.heldout_split!r} holds the same text as {key} ({split!r}): held-out "
                    "text is never trained on nor used to select a model; name a split with other text")

    def check_settings_read(self) -> None:
        """Settings that would be accepted and ignored are refused, before a run's human stage is
        built (a run built earlier with one goes on as it was built): ``data.text_column`` where no
        split has columns (lines of text), a ``data.carve_fraction`` that would carve nothing."""
        check_carves_something(self.config)
        data = self.config.data
        sources = [source for source in (self.train, self.heldout, self.validation) if source is not None]
        if data.text_column != "text" and all(source.is_local and not source.structured for source in sources):
            raise LmcollapseError(
                f"data.text_column={data.text_column!r} names a column of records, but {data.corpus} is lines of text "
                f"({', '.join(dict.fromkeys(path.name for source in sources for path in source.files))}), which "
                "have no columns: leave data.text_column out")

    def check_pretraining_text(self) -> None:
        """The pretraining split is readable and shares no text with the fine-tuning, held-out or
        validation text (by release family and split for named corpora, by file content otherwise)."""
        config, data = self.config, self.config.data
        check_source(self.pretraining)
        roles = [("data.train_split", data.train_split, self.train), ("data.heldout_split", data.heldout_split, self.heldout)]
        if self.validation is not None:
            roles.append(("data.validation_split", self.validation.split, self.validation))
        for key, split, other in roles:
            if same_text(self.pretraining, other):
                raise LmcollapseError(
                    f"pretrain.split: the {config.pretrain.split} split of {config.pretrain.corpus} holds the same text "
                    f"as {key} ({split} of {data.corpus}): pretrain on other articles (WikiText-2's default: "
                    "pretrain.split=train with data.train_split=validation and data.heldout_split=test)")
