"""What each generation trains on: the data regimes, as one function of the run's records.

N is the size of the human training set. Generation 0 trains on the N human blocks; generation
k > 0, by ``data.regime``:

* ``replace`` (Shumailov et al. 2024): generation k-1's synthetic corpus (N records).
* ``keep-fraction``: round(r N) human blocks and N - round(r N) records of generation k-1's
  corpus, both drawn at random; r is ``human_fraction``, or the generation's entry of
  ``human_fraction_schedule``. Human blocks are redrawn every generation, or drawn once
  (``human_resample: false``): then every generation takes the first round(r N) blocks of one
  seeded order, so with a schedule a smaller share is a subset of a larger one (the 5% are among
  the 20%, which are among the 50%) and a held share keeps the same blocks. The paper keeps 10%.
* ``accumulate`` (Gerstgrasser et al. 2024, "Is Model Collapse Inevitable?"): the N human
  blocks and every earlier generation's corpus: N (k + 1) records.
* ``accumulate-subsample`` (Kazdan et al., "Collapse or Thrive?"): that pool, subsampled at
  random to ``train_size`` records (N by default).

Each generation writes a corpus of exactly N records, so corpora stay comparable across regimes:
it continues all of its training blocks when there are N; a random N when the set is larger
(accumulate, or a larger ``train_size``); when it is smaller (decontamination dropped records),
every block once plus a random draw of the missing count from the set, so some blocks are
continued twice (more often only when fewer than N/2 blocks remain). A repeated prompt is continued again (differently when
sampling); the records' ``parent`` column shows which block each one continues.

Every draw is seeded from (seed, purpose, generation), or (seed, purpose, 1) for human blocks
drawn once: a training set is a pure function of the inputs, and its provenance columns show
what was chosen.

    train_set = assemble_training_set(config, generation, human_train, synthetic_of)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lmcollapse.config import PipelineConfig
from lmcollapse.data.records import HUMAN, concatenate
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.seeding import rng

if TYPE_CHECKING:
    import datasets  # the records' type; the plan and the cost estimate use this module without it


def assemble_training_set(config: PipelineConfig, generation: int, human_train: datasets.Dataset,
                          synthetic_of: Callable[[int], datasets.Dataset]) -> datasets.Dataset:
    """Generation ``generation``'s training set; ``synthetic_of(g)`` reads generation g's corpus."""
    if generation == 0:
        return human_train
    data, n = config.data, len(human_train)
    if data.regime == "replace":
        return synthetic_of(generation - 1)
    if data.regime == "keep-fraction":
        previous = synthetic_of(generation - 1)
        human_count = min(int(round(data.human_fraction_at(generation) * n)), n)
        draw = generation if data.human_resample else 1
        human_pick = choose(n, human_count, config.seed, "keep-fraction/human", draw)
        synthetic_pick = choose(len(previous), n - human_count, config.seed, "keep-fraction/synthetic", generation)
        return concatenate([human_train.select(human_pick), previous.select(synthetic_pick)])
    pool = concatenate([human_train] + [synthetic_of(g) for g in range(generation)])
    if data.regime == "accumulate":
        return pool
    if data.regime == "accumulate-subsample":
        size = data.train_size or n
        return pool.select(choose(len(pool), size, config.seed, "accumulate-subsample", generation))
    raise ValueError(f"unknown data.regime {data.regime!r}")


def prompts_for(config: PipelineConfig, generation: int, train_set: datasets.Dataset, corpus_size: int,
                human_train: datasets.Dataset | None = None) -> datasets.Dataset:
    """The ``corpus_size`` blocks a generation continues, so its corpus has that size.

    With ``generate.prompts: human`` they are drawn from ``human_train`` (the original human
    blocks) instead of ``train_set``, by the same rules:

    * as many blocks as ``corpus_size``: all of them, in order;
    * more: a seeded random ``corpus_size`` of them, in order;
    * fewer (decontamination dropped some): every block once, then a seeded draw of the
      ``corpus_size - len(train_set)`` missing prompts from the set, without replacement when one
      extra pass suffices (no block more than twice), with replacement when more are missing.
      A repeated block is a separate prompt: sampled, it gets a continuation of its own (greedy or
      beam search writes the same one again).
    """
    if config.generate.prompts == "human":
        if human_train is None:
            raise ValueError("generate.prompts=human needs the human training blocks")
        train_set = human_train
    n = len(train_set)
    if n == corpus_size:
        return train_set
    if n > corpus_size:
        return train_set.select(choose(n, corpus_size, config.seed, "prompts", generation))
    if n == 0:
        raise LmcollapseError(f"generation {generation}'s training set is empty: there is nothing to continue "
                              "(did decontamination drop every record? raise decontaminate.threshold)")
    missing = corpus_size - n
    if missing <= n:
        extra = choose(n, missing, config.seed, "prompts/extra", generation)
    else:
        extra = np.sort(rng(config.seed, "prompts/extra", generation).choice(n, size=missing, replace=True))
    return train_set.select(np.concatenate([np.arange(n), extra]))


def consumed_generations(config: PipelineConfig, generation: int) -> list[int]:
    """The earlier generations whose corpora generation ``generation`` trains on."""
    if generation == 0:
        return []
    if config.data.regime in ("accumulate", "accumulate-subsample"):
        return list(range(generation))
    return [generation - 1]


def choose(population: int, count: int, seed: int, purpose: str, draw: int) -> np.ndarray:
    """``count`` distinct indices of ``range(population)``, seeded, in increasing order.

    The first ``count`` entries of one permutation seeded by (seed, purpose, draw): a pure
    function of those, and nested, so a smaller draw with the same key is a subset of a larger one.
    """
    if count >= population:
        return np.arange(population)
    return np.sort(rng(seed, purpose, draw).permutation(population)[:count])


def source_counts(records: datasets.Dataset) -> dict[str, int]:
    """How many records of each source (``human`` / ``synthetic``) a training set holds."""
    sources, counts = np.unique(np.asarray(records["source"], dtype=object).astype(str), return_counts=True)
    return {str(s): int(c) for s, c in zip(sources, counts)}


def loss_weights(config: PipelineConfig, records: datasets.Dataset) -> np.ndarray | None:
    """Per-record loss weights from provenance: ``train.human_loss_weight`` for human records."""
    if config.train.human_loss_weight == 1.0:
        return None
    is_human = np.asarray(records["source"], dtype=object) == HUMAN
    return np.where(is_human, config.train.human_loss_weight, 1.0)


def describe_regime(config: PipelineConfig) -> str:
    data = config.data
    if data.regime == "replace":
        text = "replace: each generation trains only on the previous generation's text"
    elif data.regime == "keep-fraction":
        share = (f"{data.human_fraction:.0%}" if data.human_fraction_schedule is None else
                 "/".join(f"{f:.0%}" for f in data.human_fraction_schedule) + " (generations 1, 2, ...)")
        text = (f"keep-fraction: {share} human blocks ({'redrawn every generation' if data.human_resample else 'drawn once'})"
                " + the previous generation's text")
    elif data.regime == "accumulate":
        text = "accumulate: all human blocks + every earlier generation's text (the set grows by N each generation)"
    else:
        text = f"accumulate-subsample: the accumulated pool subsampled to {data.train_size or 'N (the human size)'} blocks"
    if config.model.init == "previous":
        text += "; each generation starts from the previous model"
    elif config.model.init == "generation-0":
        text += ("; each generation starts from generation 0's model" if config.model.chain is None else
                 "; each generation starts from its family's first generation (that one from the family's base)")
    if config.model.chain is not None:
        text += "; families " + " -> ".join(config.model.chain) + " (text re-encoded at each change)"
    if config.generate.prompts == "human":
        text += "; each generation continues the human training blocks"
    if config.train.human_loss_weight != 1.0:
        text += f"; human records weigh {config.train.human_loss_weight:g}x in the loss"
    if config.decontaminate.enabled:
        d = config.decontaminate
        if d.detector == "watermark":  # no fitting: the key is known, the z-score decides
            text += f"; decontaminated by the watermark detector (drop a watermark z-score > {d.watermark_threshold:g})"
        else:
            text += (f"; decontaminated by a {d.detector} detector (drop P(synthetic) > {d.threshold:g}, "
                     f"fitted on {d.labelled_fraction:.0%} labelled candidates)")
    return text
