"""The statistics a reviewer asks of a comparison over seeds, through ``scipy.stats``.

Per group and generation and metric: n, mean, standard deviation (ddof 1) and a 95% confidence
interval for the mean (Student's t). Per group against a reference group: the difference of means
with its 95% confidence interval (Welch's, unequal variances), a two-sided p-value (Welch's t-test;
where either group has fewer than ``SMALL_N`` seeds, or neither varies, an exact permutation test of
the difference of means is the one that decides, since with a handful of seeds the t-test's normal
assumption cannot be checked), Holm's step-down adjustment over every comparison of a table, and Hedges' g (the
bias-corrected standardized mean difference).

    summary = summarize([160.2, 160.5, 159.9])                  # n, mean, std, low, high
    result = compare([214.2, 213.1, 216.0], [227.6, 221.3, 233.9])
    adjusted = holm([result.p, ...])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
SMALL_N = 5  # below this many seeds in either group, the exact permutation test decides


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    low: float  # the 95% confidence interval of the mean (nan for n < 2)
    high: float


@dataclass(frozen=True)
class Comparison:
    n: int
    n_reference: int
    difference: float  # mean - reference mean
    low: float  # its 95% confidence interval (Welch)
    high: float
    p_welch: float
    p_permutation: float
    test: str  # "permutation" or "welch": the one whose p-value decides
    hedges_g: float

    @property
    def p(self) -> float:
        return self.p_permutation if self.test == "permutation" else self.p_welch


def finite(values) -> np.ndarray:
    array = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    return array[np.isfinite(array)]


def summarize(values, confidence: float = CONFIDENCE) -> Summary:
    """n, mean, standard deviation and the t confidence interval of the mean of the finite values."""
    x = finite(values)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)  # one value has no spread to estimate
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def compare(values, reference, confidence: float = CONFIDENCE) -> Comparison:
    """``values`` against ``reference`` (two independent groups of seeds); see the module docstring."""
    a, b = finite(values), finite(reference)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    low = high = p_welch = math.nan
    if len(a) >= 2 and len(b) >= 2 and (a.std() > 0 or b.std() > 0):
        with warnings.catch_warnings():
            # scipy warns of "precision loss" where seeds agree to the last digits (a metric that
            # does not vary, such as generation 0 of two regimes that share it); the result stands
            warnings.simplefilter("ignore", RuntimeWarning)
            welch = stats.ttest_ind(a, b, equal_var=False)
            interval = welch.confidence_interval(confidence_level=confidence)
        p_welch = float(welch.pvalue)
        low, high = float(interval.low), float(interval.high)
    p_permutation = permutation_p(a, b)
    # Welch's test is undefined where neither group varies; the permutation test is exact there too
    test = "permutation" if min(len(a), len(b)) < SMALL_N or math.isnan(p_welch) else "welch"
    return Comparison(len(a), len(b), difference, low, high, p_welch, p_permutation, test, hedges_g(a, b))


def permutation_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the difference of means under every relabelling of the seeds (exact
    where there are at most 100,000, as many seeded resamples otherwise); nan where a group has
    fewer than two values (scipy's condition; with one, no p-value could be below 1/3 anyway)."""
    if min(len(a), len(b)) < 2:
        return math.nan
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0  # every value the same: nothing distinguishes the groups

    def mean_difference(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    result = stats.permutation_test((a, b), mean_difference, permutation_type="independent", vectorized=True,
                                    alternative="two-sided", n_resamples=100_000, rng=np.random.default_rng(0))
    return float(result.pvalue)


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """(mean a - mean b) / pooled standard deviation, times Hedges' small-sample correction
    J = 1 - 3 / (4 (n_a + n_b) - 9); nan where it is undefined (fewer than two seeds in all, no spread)."""
    na, nb = len(a), len(b)
    if na + nb < 3 or na == 0 or nb == 0:
        return math.nan
    pooled = math.sqrt(((na - 1) * (a.var(ddof=1) if na > 1 else 0.0) + (nb - 1) * (b.var(ddof=1) if nb > 1 else 0.0))
                       / (na + nb - 2))
    if pooled == 0:
        return math.nan
    correction = 1 - 3 / (4 * (na + nb) - 9)
    return float((a.mean() - b.mean()) / pooled * correction)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest of m is multiplied
    by m - i + 1, made monotone and capped at 1 (nan stays nan, and does not count among the m)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
