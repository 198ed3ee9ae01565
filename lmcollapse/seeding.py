"""Seeds as pure functions of where they are used.

Every random choice derives its seed from (run seed, purpose, generation, index): data order from
(seed, "order", generation, epoch), dropout from (seed, "dropout", generation, step, process),
sampling from (seed, "generate", generation, shard). A resumed stage therefore draws exactly
the numbers an uninterrupted one draws, whatever happened before it.

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
