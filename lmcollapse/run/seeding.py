"""Seeds as pure functions of where they are used.

Every random choice derives its seed from (run seed, purpose, generation, index): data order from
(seed, "order", generation, epoch), dropout from (seed, "dropout", generation, step, micro-batch),
sampling from (seed, "generate", generation, shard). A resumed stage therefore draws exactly
the numbers an uninterrupted one draws, whatever happened before it. Every draw goes through
this module; ``subsample_indices`` is the one not keyed by purpose (see there).

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


def subsample_indices(total: int, size: int, seed: int) -> np.ndarray:
    """A fixed subset of ``size`` of ``range(total)``, in increasing order: the training subset
    (``data.max_train_blocks`` with ``data.subset_seed``) and the self-BLEU subsample (the run's seed).

    The one draw not keyed by purpose: it uses ``default_rng(seed)`` itself, as every run so far
    did, so the training subset and the self-BLEU subsample come from one stream when the two seeds
    are equal. Keying it by purpose would change every training subset, and so every published
    number; that change waits for the next re-measurement of the README's tables.
    """
    return np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
