"""Distinct-n, in two conventions, and the survival of the human corpus's rare n-grams.

* corpus-level ``distinct_n``: distinct n-grams / the total number of n-grams over every sample
  together (n-grams never cross a sample boundary; a sample of k tokens has k - n + 1 of them);
* corpus-level ``distinct_n_li``: Li et al. (2016)'s ratio, distinct n-grams / the total number of
  tokens over every sample (the same as ``distinct_n`` for n = 1; lower for n > 1, by more the
  shorter the samples);
* per-sample ``distinct_n_per_sample``: ``distinct_n``'s ratio inside each sample, averaged over
  the samples that have at least one n-gram;
* ``rare_survival``: of the n-grams that occur at most ``max_count`` times in the human corpus
  (its tail), the fraction that occur at least once in a generation's synthetic corpus.

    distinct_n(["the cat sat", "the cat ran"], 2)      # 3 distinct of 4 bigrams -> 0.75
    distinct_n_li(["the cat sat", "the cat ran"], 2)   # 3 distinct bigrams / 6 tokens -> 0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lmcollapse.metrics.ngrams import EncodedCorpus, count_per_sample, refuse_one_text


def distinct_n(samples: Sequence[str] | Sequence[Sequence[str]] | EncodedCorpus, n: int,
               tokenization: str = "whitespace") -> float:
    """Distinct n-grams over the total number of n-grams of the corpus (nan when it has none:
    undefined, not 0, which would read as a corpus that repeats itself entirely)."""
    occurrences = _as_corpus(samples, tokenization).ngrams(n)
    if len(occurrences.ids) == 0:
        return float("nan")
    return len(pd.unique(occurrences.ids)) / len(occurrences.ids)


def distinct_n_li(samples: Sequence[str] | Sequence[Sequence[str]] | EncodedCorpus, n: int,
                  tokenization: str = "whitespace") -> float:
    """Li et al. (2016)'s distinct-n: distinct n-grams over the total number of tokens of the
    corpus (nan when it has no tokens); n-grams never cross a sample boundary."""
    corpus = _as_corpus(samples, tokenization)
    if corpus.num_tokens == 0:
        return float("nan")
    return len(pd.unique(corpus.ngrams(n).ids)) / corpus.num_tokens


def distinct_n_per_sample(samples: Sequence[str] | Sequence[Sequence[str]] | EncodedCorpus, n: int,
                          tokenization: str = "whitespace") -> float:
    """Mean over samples (with at least one n-gram) of distinct / total n-grams in the sample (nan
    when no sample has one)."""
    corpus = _as_corpus(samples, tokenization)
    occurrences = corpus.ngrams(n)
    totals = np.bincount(occurrences.samples, minlength=corpus.num_samples)
    if not totals.any():
        return float("nan")
    sample, _, _ = count_per_sample(occurrences)
    distinct = np.bincount(sample, minlength=corpus.num_samples)
    has = totals > 0
    return float(np.mean(distinct[has] / totals[has]))


def rare_ngram_survival(human: Sequence[str] | Sequence[Sequence[str]], synthetic: Sequence[str] | Sequence[Sequence[str]],
                        n: int = 1, max_count: int = 1, tokenization: str = "whitespace") -> tuple[float, int]:
    """Fraction of the human corpus's rare n-grams (count <= max_count) present in ``synthetic``.

    Returns (fraction, number of rare n-grams); the fraction is nan when there are none.
    """
    human_corpus = _as_corpus(human, tokenization)
    synthetic_corpus = _as_corpus(synthetic, tokenization)
    joint = EncodedCorpus.from_token_lists(_token_lists(human_corpus) + _token_lists(synthetic_corpus))
    occurrences = joint.ngrams(n)
    from_human = occurrences.samples < human_corpus.num_samples
    human_counts = np.bincount(occurrences.ids[from_human], minlength=occurrences.id_bound)
    rare = (human_counts >= 1) & (human_counts <= max_count)
    seen = np.zeros(occurrences.id_bound, dtype=bool)
    seen[occurrences.ids[~from_human]] = True
    total = int(rare.sum())
    if total == 0:
        return float("nan"), 0
    return float((rare & seen).sum() / total), total


def _as_corpus(samples, tokenization: str) -> EncodedCorpus:
    if isinstance(samples, EncodedCorpus):
        return samples
    refuse_one_text(samples)
    if all(isinstance(s, str) for s in samples):
        return EncodedCorpus.from_texts(list(samples), tokenization)
    return EncodedCorpus.from_token_lists(samples)


def _token_lists(corpus: EncodedCorpus) -> list[list[str]]:
    words = corpus.vocabulary[corpus.codes]
    bounds = np.concatenate([[0], np.cumsum(corpus.lengths)])
    return [list(words[bounds[i]:bounds[i + 1]]) for i in range(corpus.num_samples)]
