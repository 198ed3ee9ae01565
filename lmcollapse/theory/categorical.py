"""The categorical case: refitting component weights from N samples is Wright-Fisher drift.

Survival probabilities, expected time to loss, Zipf weights, and the simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CategoricalRun:
    initial: np.ndarray  # (K,) true weights
    samples: int
    weights: np.ndarray  # (generations + 1, chains, K) fitted weights; row 0 is the truth

    @property
    def generations(self) -> int:
        return self.weights.shape[0] - 1

    def alive(self) -> np.ndarray:
        """(generations + 1, K): fraction of chains in which each component still has weight."""
        return (self.weights > 0).mean(axis=1)

    def predicted_alive(self) -> np.ndarray:
        """(generations, K): for generation n+1, the mean over chains of 1 - (1 - w_n)^N."""
        return (1.0 - (1.0 - self.weights[:-1]) ** self.samples).mean(axis=1)

    def loss_generation(self) -> np.ndarray:
        """(chains, K): the first generation with weight 0, or -1 if never lost."""
        dead = self.weights <= 0
        first = dead.argmax(axis=0)
        return np.where(dead.any(axis=0), first, -1)


def survival_probability(weight: float | np.ndarray, samples: int):
    """Probability that a component of weight w appears at least once in N samples: 1 - (1 - w)^N."""
    return 1.0 - (1.0 - np.asarray(weight, dtype=np.float64)) ** samples


def expected_loss_generation(weight: float, samples: int) -> float:
    """Mean generation at which a component of weight w vanishes, given that it does.

    Kimura & Ohta (1969) for neutral drift, haploid population N: t = -2N w ln(w) / (1 - w).
    A diffusion approximation, close for N of tens and more.
    """
    if not 0.0 < weight < 1.0:
        raise ValueError("weight must be strictly between 0 and 1")
    return -2.0 * samples * weight * math.log(weight) / (1.0 - weight)


def zipf_weights(components: int, exponent: float = 1.1) -> np.ndarray:
    ranks = np.arange(1, components + 1, dtype=np.float64)
    weights = ranks**-exponent
    return weights / weights.sum()


def simulate_categorical(weights: np.ndarray, samples: int, generations: int, chains: int,
                         seed: int = 0) -> CategoricalRun:
    """Refit categorical weights from N samples per generation (multinomial draws) in many chains."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or not np.isclose(weights.sum(), 1.0) or (weights < 0).any():
        raise ValueError("weights must be a probability vector")
    rng = np.random.default_rng(seed)
    current = np.tile(weights, (chains, 1))
    history = [current.copy()]
    for _ in range(generations):
        counts = rng.multinomial(samples, current)
        current = counts / samples
        history.append(current.copy())
    return CategoricalRun(weights, samples, np.array(history))
