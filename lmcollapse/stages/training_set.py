"""The training-set stage: what generation k trains on, by the data regime (``data/regimes.py``),
decontaminated if asked (``decontaminate.py``), written once as ``train-set.parquet``. With
``model.chain`` it is in the generation's own family: its family's human blocks, and the corpora
of other families re-encoded by its tokenizer (``data/retokenize.py``).

    train_set, sha = ensure_training_set(context, index)
"""

from __future__ import annotations

from lmcollapse.data.records import read_records, write_records
from lmcollapse.data.regimes import assemble_training_set
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import sha256_file
from lmcollapse.stages.context import Context
from lmcollapse.stages.decontaminate import filter_candidates
from lmcollapse.stages.generate import read_synthetic_as


def ensure_training_set(context: Context, index: int):
    """The regime's training set (decontaminated if asked), and its sha256."""
    run, config = context.run, context.config
    generation = run.generation(index)
    if context.main and not generation.train_set.is_file():
        family = context.family_of(index)  # with model.chain, other families' text is re-encoded
        human_train = read_records(family.run.human_train)
        candidates = assemble_training_set(config, index, human_train, lambda g: read_synthetic_as(context, g, family))
        if config.decontaminate.enabled and index > 0:
            candidates = filter_candidates(context, index, candidates)
            if len(candidates) == 0:  # refused before anything is written: no empty training set left on disk
                setting = "decontaminate.watermark_threshold" if config.decontaminate.detector == "watermark" \
                    else "decontaminate.threshold"
                raise LmcollapseError(
                    f"generation {index}: decontamination dropped every record of the training set, so there is "
                    f"nothing to train on: this run's {setting} ({getattr(config.decontaminate, setting.split('.')[1])}) "
                    "cannot build it; start a new RUN=... with a setting that keeps some, or remove "
                    f"{generation.root} and the generations after it to go on with another")
        write_records(candidates, generation.train_set)
    context.accelerator.wait_for_everyone()
    return read_records(generation.train_set), sha256_file(generation.train_set)
