"""What each generation trains on: the data regimes, as one function of the run's records.

* generation 0 trains on the human training blocks;
* ``replace`` (Shumailov et al.): generation k trains only on generation k-1's synthetic corpus;
* ``keep-fraction``: a fraction r of the training set is human blocks (a fresh random draw every
  generation, or one fixed draw with ``human_resample: false``) and the rest is a random subset
  of generation k-1's synthetic corpus, so the training set keeps its size (the paper's 10%).

Every draw is seeded from (seed, purpose, generation), so the set is a pure function of the
inputs; the provenance columns (``source``, ``generation``) show what was chosen.

    train_set = assemble_training_set(config, generation, human_train, previous_synthetic)
"""

from __future__ import annotations

import datasets
import numpy as np

from lmcollapse.config import PipelineConfig
from lmcollapse.records import concatenate
from lmcollapse.seeding import rng


def assemble_training_set(config: PipelineConfig, generation: int, human_train: datasets.Dataset,
                          previous_synthetic: datasets.Dataset | None) -> datasets.Dataset:
    if generation == 0:
        return human_train
    if previous_synthetic is None:
        raise ValueError(f"generation {generation} needs generation {generation - 1}'s synthetic corpus")
    data = config.data
    if data.regime == "replace":
        return previous_synthetic
    if data.regime == "keep-fraction":
        total = len(previous_synthetic)
        human_count = min(int(round(data.human_fraction * total)), len(human_train))
        draw = generation if data.human_resample else 1
        human_pick = _choose(len(human_train), human_count, config.seed, "keep-fraction/human", draw)
        synthetic_pick = _choose(total, total - human_count, config.seed, "keep-fraction/synthetic", generation)
        return concatenate([human_train.select(human_pick), previous_synthetic.select(synthetic_pick)])
    raise ValueError(f"unknown data.regime {data.regime!r}")


def _choose(population: int, count: int, seed: int, purpose: str, generation: int) -> np.ndarray:
    """``count`` distinct indices of ``range(population)``, seeded, in increasing order."""
    if count >= population:
        return np.arange(population)
    return np.sort(rng(seed, purpose, generation).choice(population, size=count, replace=False))


def source_counts(records: datasets.Dataset) -> dict[str, int]:
    """How many records of each source (``human`` / ``synthetic``) a training set holds."""
    sources, counts = np.unique(np.asarray(records["source"], dtype=object).astype(str), return_counts=True)
    return {str(s): int(c) for s, c in zip(sources, counts)}
