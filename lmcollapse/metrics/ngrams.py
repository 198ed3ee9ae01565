"""Words and n-grams for the text metrics, as dense integer ids computed in linear time.

Python tuples in a ``Counter`` cost ~1 µs per n-gram; self-BLEU and distinct-n on 100,000
samples see tens of millions. Here every token becomes an integer (``pandas.factorize``, a hash
table), and the id of an n-gram is the factorized pair (id of its (n-1)-gram prefix, its last
token), so all orders come from one pass each over the token array.

    corpus = EncodedCorpus.from_texts(["the cat sat", "the cat"], "whitespace")
    occurrences = corpus.ngrams(2)   # ids and owning sample of every bigram inside a sample
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@functools.cache
def word_tokenizer(method: str) -> Callable[[str], list[str]]:
    """How decoded text is split into words; none of these needs downloaded NLTK data."""
    if method == "whitespace":
        return str.split
    if method == "nltk-wordpunct":
        from nltk.tokenize import WordPunctTokenizer

        return WordPunctTokenizer().tokenize
    if method == "nltk-tweet":
        from nltk.tokenize import TweetTokenizer

        return TweetTokenizer().tokenize
    raise ValueError(f"unknown text tokenization {method!r}: use whitespace, nltk-wordpunct or nltk-tweet")


def tokenize_texts(texts: Sequence[str], method: str = "whitespace") -> list[list[str]]:
    split = word_tokenizer(method)
    return [split(text) for text in texts]


@dataclass(frozen=True)
class NgramOccurrences:
    """Every n-gram that lies inside one sample: its dense id and the sample it belongs to."""

    n: int
    ids: np.ndarray  # int64, one per occurrence
    samples: np.ndarray  # int64, the owning sample of each occurrence
    id_bound: int  # every id is below this


def refuse_one_text(samples) -> None:
    """A corpus is a list of texts (or of token lists): one text on its own would be read as a
    list of one-character samples."""
    if isinstance(samples, (str, bytes)):
        raise TypeError(f"expected a list of texts, got one text ({samples[:40]!r}...): pass [text] for a corpus of one")


@dataclass
class EncodedCorpus:
    """Samples as one int64 token array plus per-sample lengths."""

    codes: np.ndarray
    lengths: np.ndarray
    vocabulary: np.ndarray
    _chain: list[np.ndarray] = field(default_factory=list, repr=False)

    @classmethod
    def from_token_lists(cls, samples: Sequence[Sequence[str]]) -> EncodedCorpus:
        lengths = np.fromiter((len(s) for s in samples), dtype=np.int64, count=len(samples))
        flat = np.empty(int(lengths.sum()), dtype=object)
        position = 0
        for sample in samples:
            flat[position:position + len(sample)] = sample
            position += len(sample)
        codes, vocabulary = pd.factorize(flat, sort=False)
        return cls(codes.astype(np.int64, copy=False), lengths, np.asarray(vocabulary, dtype=object))

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenization: str = "whitespace") -> EncodedCorpus:
        return cls.from_token_lists(tokenize_texts(texts, tokenization))

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return len(self.codes)

    def subset(self, indices: np.ndarray) -> EncodedCorpus:
        """The samples at ``indices`` (in that order), sharing the token ids."""
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        pieces = [self.codes[starts[i]:starts[i] + self.lengths[i]] for i in indices]
        codes = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
        return EncodedCorpus(codes, self.lengths[indices].copy(), self.vocabulary)

    def ngrams(self, n: int) -> NgramOccurrences:
        """Ids of all n-grams that do not cross a sample boundary (equal n-grams, equal ids)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        total = self.num_tokens
        ids = self._chained_ids(n)
        width = max(total - n + 1, 0)
        sample_of = np.repeat(np.arange(self.num_samples, dtype=np.int64), self.lengths)[:width]
        sample_end = np.cumsum(self.lengths)[sample_of]
        inside = np.arange(width, dtype=np.int64) + n <= sample_end
        bound = int(ids.max()) + 1 if len(ids) else 0
        return NgramOccurrences(n, ids[inside], sample_of[inside], bound)

    def _chained_ids(self, n: int) -> np.ndarray:
        # ids[n-1][p] identifies the token sequence codes[p:p+n] (windows that cross a sample
        # boundary get ids too; ngrams() masks them out).
        if not self._chain:
            self._chain.append(self.codes)
        vocab = max(len(self.vocabulary), 1)
        while len(self._chain) < n:
            order = len(self._chain) + 1
            prefix = self._chain[-1][: max(self.num_tokens - order + 1, 0)]
            if len(prefix) and int(prefix.max()) >= (np.iinfo(np.int64).max - vocab) // vocab:
                raise OverflowError("corpus too large for 64-bit n-gram keys")
            key = prefix * vocab + self.codes[order - 1:]
            dense, _ = pd.factorize(key, sort=False)
            self._chain.append(dense.astype(np.int64, copy=False))
        return self._chain[n - 1]


def count_per_sample(occurrences: NgramOccurrences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse occurrences to distinct (sample, n-gram) pairs: (sample, n-gram id, count)."""
    key = occurrences.samples * max(occurrences.id_bound, 1) + occurrences.ids
    pair, unique_keys = pd.factorize(key, sort=False)
    counts = np.bincount(pair, minlength=len(unique_keys)).astype(np.int64)
    unique_keys = np.asarray(unique_keys, dtype=np.int64)
    bound = max(occurrences.id_bound, 1)
    return unique_keys // bound, unique_keys % bound, counts
