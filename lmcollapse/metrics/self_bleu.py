"""Self-BLEU, exact and linear in the number of n-grams.

Self-BLEU (Zhu et al. 2018, Texygen) scores each sample as a hypothesis against the *other*
samples as references and averages: high means the samples repeat each other. Here the samples
are a fixed, seeded subsample of M of the corpus (``num_samples``, 1,000 by default; all of them
when the corpus has no more, or with ``num_samples=None``): each of the M hypotheses is scored
against the other M - 1 samples *of the subsample*, not against the rest of the corpus. NLTK's
``sentence_bleu`` in a leave-one-out loop costs O(M² · n-grams): an hour at M = 10,000. NLTK is
not used for the computation; its semantics are reproduced exactly:

* clipped counts: an n-gram of the hypothesis counts at most as often as its largest count in
  any *other* sample. For every n-gram we keep its largest count, which sample holds it, and the
  largest count outside that sample; a hypothesis then reads its clip in O(1).
* the closest reference length with NLTK's tie-break (the shorter one), from one sorted array of
  lengths with the hypothesis' own length taken out;
* brevity penalty, uniform weights 1/max_n, smoothing ``method0``–``method5`` and ``method7``
  with NLTK's exact arithmetic (raw, unreduced denominators; zero precisions skipped in the sum).

The result equals the mean of NLTK's ``sentence_bleu`` over hypotheses to within 1e-9 (tested on
random corpora with duplicates, empty and one-token samples), at O(total n-grams) cost.

    score = self_bleu(["the cat sat", "the cat ran", "a dog"], max_n=4)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from lmcollapse.metrics.ngrams import EncodedCorpus, count_per_sample, refuse_one_text
from lmcollapse.run.seeding import subsample_indices

SUPPORTED_SMOOTHING = ("method0", "method1", "method2", "method3", "method4", "method5", "method7")
_EPSILON = 0.1  # NLTK SmoothingFunction defaults
_K = 5


def self_bleu(
    samples: Sequence[str] | Sequence[Sequence[str]],
    max_n: int = 4,
    smoothing: str = "method1",
    tokenization: str = "whitespace",
    num_samples: int | None = 1000,
    seed: int = 0,
) -> float:
    """Mean leave-one-out BLEU-``max_n`` of the samples (texts or lists of words).

    ``num_samples``: draw a fixed subset of this many samples with ``seed`` and score each of them
    against the other ``num_samples - 1`` of the subset only; all samples (each against all the
    others) when None or when there are no more than ``num_samples``.
    """
    corpus = _encode(samples, tokenization)
    if num_samples is not None and num_samples < corpus.num_samples:
        corpus = corpus.subset(subsample_indices(corpus.num_samples, num_samples, seed, "self-bleu"))
    return float(np.mean(self_bleu_scores(corpus, max_n, smoothing)))


def self_bleu_scores(corpus: EncodedCorpus, max_n: int = 4, smoothing: str = "method1") -> np.ndarray:
    """NLTK ``sentence_bleu`` of every sample against all the others, as an array."""
    if smoothing not in SUPPORTED_SMOOTHING:
        raise ValueError(
            f"unsupported smoothing {smoothing!r}: use one of {', '.join(SUPPORTED_SMOOTHING)} "
            "(method6 needs a non-zero trigram precision for every hypothesis and is left out)"
        )
    if max_n < 1:
        raise ValueError("max_n must be at least 1")
    if corpus.num_samples < 2:
        raise ValueError("self-BLEU needs at least 2 samples (each one is scored against the others)")
    # method5 (and 7) always read the 5-gram precision, whatever max_n is (NLTK's definition).
    orders = max(max_n, 5) if smoothing in ("method5", "method7") else max_n
    numerators, denominators = leave_one_out_matches(corpus, orders)
    ref_lengths = closest_other_lengths(corpus.lengths)
    weights = tuple(1.0 / max_n for _ in range(max_n))
    scores = np.empty(corpus.num_samples)
    for j in range(corpus.num_samples):
        scores[j] = _sentence_bleu(
            [int(x) for x in numerators[j]], [int(x) for x in denominators[j]],
            int(corpus.lengths[j]), int(ref_lengths[j]), weights, smoothing,
        )
    return scores


def leave_one_out_matches(corpus: EncodedCorpus, orders: int) -> tuple[np.ndarray, np.ndarray]:
    """Clipped n-gram matches of each sample against all the others, and its n-gram totals.

    Returns (numerators, denominators), both shaped (samples, orders), where column n-1 holds
    NLTK's ``modified_precision(others, sample, n)`` numerator and (raw) denominator.
    """
    m = corpus.num_samples
    numerators = np.zeros((m, orders), dtype=np.int64)
    denominators = np.ones((m, orders), dtype=np.int64)
    for n in range(1, orders + 1):
        sample, gram, count = count_per_sample(corpus.ngrams(n))
        bound = max(int(gram.max()) + 1 if len(gram) else 0, 1)
        top = np.zeros(bound, dtype=np.int64)
        np.maximum.at(top, gram, count)
        # Any one sample holding the top count will do: if two share it, the second-largest
        # count below equals the top, so both read the same clip.
        holder = np.full(bound, -1, dtype=np.int64)
        at_top = count == top[gram]
        holder[gram[at_top]] = sample[at_top]
        runner_up = np.zeros(bound, dtype=np.int64)
        others = sample != holder[gram]
        np.maximum.at(runner_up, gram[others], count[others])
        best_other = np.where(sample == holder[gram], runner_up[gram], top[gram])
        clipped = np.minimum(count, best_other)
        numerators[:, n - 1] = np.bincount(sample, weights=clipped, minlength=m).astype(np.int64)
        denominators[:, n - 1] = np.maximum(1, corpus.lengths - n + 1)
    return numerators, denominators


def closest_other_lengths(lengths: np.ndarray) -> np.ndarray:
    """For each sample, the length among the *other* samples closest to its own (ties: shorter)."""
    m = len(lengths)
    ordered = np.sort(lengths)
    lo = np.searchsorted(ordered, lengths, side="left")
    hi = np.searchsorted(ordered, lengths, side="right")
    has_twin = hi - lo >= 2
    has_below = lo > 0
    has_above = hi < m
    below = ordered[np.maximum(lo - 1, 0)]
    above = ordered[np.minimum(hi, m - 1)]
    take_below = has_below & (~has_above | (lengths - below <= above - lengths))
    return np.where(has_twin, lengths, np.where(take_below, below, above))


def _sentence_bleu(nums: list[int], dens: list[int], hyp_len: int, ref_len: int,
                   weights: tuple[float, ...], smoothing: str) -> float:
    # Mirrors nltk.translate.bleu_score.corpus_bleu for one hypothesis, operation for operation.
    if nums[0] == 0:
        return 0.0
    max_n = len(weights)
    p_n = _smooth(smoothing, nums, dens, max_n, hyp_len)
    bp = _brevity_penalty(ref_len, hyp_len)
    terms = (w * math.log(p) for w, p in zip(weights, p_n) if p > 0)
    return bp * math.exp(math.fsum(terms))


def _brevity_penalty(closest_ref_len: int, hyp_len: int) -> float:
    if hyp_len > closest_ref_len:
        return 1
    if hyp_len == 0:
        return 0
    return math.exp(1 - closest_ref_len / hyp_len)


def _smooth(method: str, nums: list[int], dens: list[int], max_n: int, hyp_len: int) -> list:
    # NLTK's p_n are Fractions that remember their raw numerator and denominator; the smoothing
    # methods read those raw values, so they are passed alongside.
    p_n: list = [Fraction(nums[i], dens[i]) for i in range(max_n)]
    if method == "method0":
        return [p if nums[i] != 0 else sys.float_info.min for i, p in enumerate(p_n)]
    if method == "method1":
        return [(nums[i] + _EPSILON) / dens[i] if nums[i] == 0 else p for i, p in enumerate(p_n)]
    if method == "method2":
        return [Fraction(nums[i] + 1, dens[i] + 1) if i != 0 else p_n[0] for i in range(max_n)]
    if method == "method3":
        increment = 1
        for i in range(max_n):
            if nums[i] == 0:
                p_n[i] = 1 / (2**increment * dens[i])
                increment += 1
        return p_n
    if method == "method4":
        return _method4(p_n, nums, dens, hyp_len)
    if method == "method5":
        return _method5(p_n, Fraction(nums[4], dens[4]))
    if method == "method7":
        return _method5(_method4(p_n, nums, dens, hyp_len), Fraction(nums[4], dens[4]))
    raise ValueError(f"unsupported smoothing {method!r}")


def _method4(p_n: list, nums: list[int], dens: list[int], hyp_len: int) -> list:
    increment = 1
    for i in range(len(p_n)):
        if nums[i] == 0 and hyp_len > 1:
            numerator = 1 / (2**increment * _K / math.log(hyp_len))
            p_n[i] = numerator / dens[i]
            increment += 1
    return p_n


def _method5(p_n: list, five_gram_precision: Fraction) -> list:
    following = p_n + [five_gram_precision]
    previous = p_n[0] + 1
    for i, p_i in enumerate(p_n):
        p_n[i] = (previous + p_i + following[i + 1]) / 3
        previous = p_n[i]
    return p_n


def _encode(samples: Sequence[str] | Sequence[Sequence[str]], tokenization: str) -> EncodedCorpus:
    refuse_one_text(samples)
    if all(isinstance(s, str) for s in samples):
        return EncodedCorpus.from_texts(list(samples), tokenization)  # type: ignore[arg-type]
    return EncodedCorpus.from_token_lists(samples)  # type: ignore[arg-type]
