"""Seeds as pure functions of where they are used.

Every random choice derives its seed from (run seed, purpose, generation, index): data order from
(seed, "order", generation, epoch), dropout from (seed, "dropout", generation, step, micro-batch),
sampling from (seed, "generate", generation, shard), the training subset from (subset seed,
"training-subset"), the self-BLEU subsample from (seed, "self-bleu"). A resumed stage therefore
draws exactly the numbers an uninterrupted one draws, whatever happened before it, and no two
purposes share a stream. Every draw goes through this module.

    order = rng(seed, "order", generation, epoch).permutation(n)
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *path: int | str) -> int:
    """A 63-bit seed determined by ``seed`` and ``path`` alone."""
    material = [int(seed)]
    for part in path:
        if isinstance(part, str):
            material.append(int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little"))
        else:
            material.append(int(part))
    low, high = np.random.SeedSequence(material).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & ((1 << 63) - 1)


def rng(seed: int, *path: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *path))


def subsample_indices(total: int, size: int, seed: int, purpose: str) -> np.ndarray:
    """A fixed subset of ``size`` of ``range(total)``, in increasing order, drawn from the stream of
    (seed, purpose): the training subset (``data.max_train_blocks`` with ``data.subset_seed``,
    purpose "training-subset") and the self-BLEU subsample (the run's seed, "self-bleu"). Keyed by
    purpose so that the two never come from one stream when their seeds are equal."""
    return np.sort(rng(seed, purpose).choice(total, size=size, replace=False))
