"""Self-BLEU, distinct-n and rare n-gram survival against direct, reference computations."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from lmcollapse.metrics import (
    REGISTRY,
    distinct_n,
    distinct_n_li,
    distinct_n_per_sample,
    rare_ngram_survival,
    self_bleu,
)
from lmcollapse.metrics.ngrams import EncodedCorpus
from lmcollapse.metrics.self_bleu import SUPPORTED_SMOOTHING, closest_other_lengths
from lmcollapse.run.seeding import subsample_indices

SMOOTHING = SmoothingFunction()


def nltk_self_bleu(samples: list[list[str]], max_n: int, method: str) -> float:
    """The definition, literally: NLTK sentence_bleu of each sample against all the others."""
    weights = tuple(1.0 / max_n for _ in range(max_n))
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # method0 warns about zero counts
        for j, hypothesis in enumerate(samples):
            references = samples[:j] + samples[j + 1:]
            scores.append(sentence_bleu(references, hypothesis, weights=weights,
                                        smoothing_function=getattr(SMOOTHING, method)))
    return float(np.mean(scores))


# Small vocabularies force repeats and shared n-grams; lengths include 0 and 1; duplicates are
# added explicitly, since a duplicated sample is exactly where leave-one-out is easy to get wrong.
words = st.sampled_from(["a", "b", "c", "d", "e", "the", "of"])
sample = st.lists(words, min_size=0, max_size=14)
corpora = st.lists(sample, min_size=2, max_size=9).flatmap(
    lambda c: st.lists(st.sampled_from(c), max_size=3).map(lambda dups: c + dups))


@settings(max_examples=120, deadline=None)
@given(corpora, st.integers(min_value=1, max_value=4), st.sampled_from(SUPPORTED_SMOOTHING))
def test_self_bleu_equals_nltk_leave_one_out(samples, max_n, smoothing):
    ours = self_bleu(samples, max_n=max_n, smoothing=smoothing, num_samples=None)
    assert abs(ours - nltk_self_bleu(samples, max_n, smoothing)) <= 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_self_bleu_on_seeded_random_corpora_with_longer_samples(seed):
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(int(rng.integers(3, 40)))]
    samples = [list(rng.choice(vocab, size=int(rng.choice([0, 1, 2, 5, 17, 40])))) for _ in range(int(rng.integers(2, 30)))]
    samples += [list(samples[0]), []]
    for max_n in (1, 2, 3, 4):
        for smoothing in SUPPORTED_SMOOTHING:
            ours = self_bleu(samples, max_n=max_n, smoothing=smoothing, num_samples=None)
            assert abs(ours - nltk_self_bleu(samples, max_n, smoothing)) <= 1e-9, (max_n, smoothing)


def test_self_bleu_of_texts_and_the_seeded_subsample():
    texts = [f"sample {i} says {'the cat sat' if i % 3 else 'a dog ran'} on mat {i % 5}" for i in range(40)]
    tokens = [t.split() for t in texts]
    assert self_bleu(texts, num_samples=None) == pytest.approx(nltk_self_bleu(tokens, 4, "method1"), abs=1e-9)
    picked = subsample_indices(len(texts), 12, seed=7, purpose="self-bleu")
    assert list(picked) == sorted(set(picked.tolist())) and len(picked) == 12
    expected = nltk_self_bleu([tokens[i] for i in picked], 4, "method1")
    assert self_bleu(texts, num_samples=12, seed=7) == pytest.approx(expected, abs=1e-9)
    assert self_bleu(texts, num_samples=1000) == self_bleu(texts, num_samples=None)  # fewer samples than M: all


def test_self_bleu_extremes_and_errors():
    assert self_bleu(["x y z w"] * 4) == pytest.approx(1.0)
    assert self_bleu(["a b", "c d", "e f"]) == 0.0  # no unigram shared with any other sample
    with pytest.raises(ValueError, match="at least 2 samples"):
        self_bleu(["only one"])
    with pytest.raises(ValueError, match="method6"):
        self_bleu(["a b", "a c"], smoothing="method6")


def test_closest_reference_length_uses_the_others_and_nltk_tie_break():
    lengths = np.array([5, 5, 3, 7, 10])
    # 5 has a twin; 3 -> 5; 7 -> 5 (5 and ... 10 is farther); 10 -> 7
    assert closest_other_lengths(lengths).tolist() == [5, 5, 5, 5, 7]
    assert closest_other_lengths(np.array([4, 2, 6])).tolist() == [2, 4, 4]  # 4: 2 and 6 tie -> the shorter


@settings(max_examples=80, deadline=None)
@given(st.lists(sample, min_size=1, max_size=10), st.integers(min_value=1, max_value=4))
def test_distinct_n_equals_a_direct_count(samples, n):
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    expected = len(set(grams)) / len(grams) if grams else math.nan  # no n-gram: undefined, not 0
    assert distinct_n(samples, n) == pytest.approx(expected, abs=1e-12, nan_ok=True)
    tokens = sum(len(s) for s in samples)
    assert distinct_n_li(samples, n) == pytest.approx(len(set(grams)) / tokens if tokens else math.nan, abs=1e-12,
                                                      nan_ok=True)
    per_sample = [len(set(g)) / len(g) for g in
                  ([tuple(s[i:i + n]) for i in range(len(s) - n + 1)] for s in samples) if g]
    assert distinct_n_per_sample(samples, n) == pytest.approx(float(np.mean(per_sample)) if per_sample else math.nan,
                                                              abs=1e-12, nan_ok=True)


def test_distinct_n_li_divides_by_tokens_by_hand():
    # "the cat sat" / "the cat ran": 6 tokens; bigrams (the cat) x2, (cat sat), (cat ran): 3 distinct of 4;
    # trigrams (the cat sat), (the cat ran): 2 distinct of 2.
    texts = ["the cat sat", "the cat ran"]
    assert distinct_n_li(texts, 1) == pytest.approx(4 / 6) == distinct_n(texts, 1)
    assert distinct_n_li(texts, 2) == pytest.approx(3 / 6) and distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n_li(texts, 3) == pytest.approx(2 / 6) and distinct_n(texts, 3) == pytest.approx(1.0)
    # Empty and one-token samples count their tokens; n-grams never cross samples: 5 tokens,
    # bigrams (a b) x2 and (b a) only (not "a" + "a b ...").
    samples = [["a"], [], ["a", "b", "a", "b"]]
    assert distinct_n_li(samples, 2) == pytest.approx(2 / 5) and distinct_n(samples, 2) == pytest.approx(2 / 3)
    assert distinct_n_li(samples, 5) == 0.0 and math.isnan(distinct_n_li([[], []], 1))  # no 5-gram of 5 tokens; no token
    assert math.isnan(distinct_n(["a b"], 4)) and math.isnan(distinct_n_per_sample(["a b"], 4))
    with pytest.raises(TypeError, match="expected a list of texts, got one text"):
        distinct_n("the cat sat", 1)  # not three one-character samples


def test_definitions_say_what_is_computed():
    bleu = REGISTRY["self_bleu_4"].definition
    assert "all other samples" not in bleu and "subsample of M samples" in bleu
    assert "other M - 1 samples of the subsample" in bleu and "seed" in bleu
    assert "the total number of 2-grams" in REGISTRY["distinct_2"].definition
    assert "Li et al. 2016 divide by the number of tokens instead: distinct_2_li" in REGISTRY["distinct_2"].definition
    li = REGISTRY["distinct_2_li"]
    assert "Li et al. (2016)" in li.definition and "the total number of tokens" in li.definition
    assert li.higher_is_better is True and li.aggregation == "corpus-level ratio" and li.decimals == 4
    assert list(REGISTRY).index("distinct_8") < list(REGISTRY).index("distinct_1_li") < list(REGISTRY).index("distinct_1_per_sample")


def test_ngrams_never_cross_sample_boundaries():
    corpus = EncodedCorpus.from_token_lists([["a", "b"], ["c"], [], ["a", "b", "c"]])
    bigrams = corpus.ngrams(2)
    assert len(bigrams.ids) == 3 and bigrams.samples.tolist() == [0, 3, 3]
    assert bigrams.ids[0] == bigrams.ids[1]  # ("a", "b") in samples 0 and 3


def test_rare_ngram_survival():
    human = ["the cat sat on the mat", "the dog ran", "a zebra grazed"]
    counts = Counter(w for t in human for w in t.split())
    rare = {w for w, c in counts.items() if c <= 1}
    synthetic = ["the cat ran", "zebra zebra", "nothing new"]
    seen = {w for t in synthetic for w in t.split()}
    fraction, total = rare_ngram_survival(human, synthetic, n=1, max_count=1)
    assert total == len(rare) and fraction == pytest.approx(len(rare & seen) / len(rare))
    assert math.isnan(rare_ngram_survival(["a a", "a"], ["a"], n=1, max_count=1)[0])


def test_every_metric_is_defined_in_the_registry():
    for name in ("ppl_blocks", "ppl_sliding", "self_bleu_4", "distinct_1", "distinct_4_per_sample",
                 "tail_ppl_p1", "tail_ppl_p99", "rare_survival"):
        entry = REGISTRY[name]
        assert entry.definition and entry.aggregation
    assert REGISTRY["ppl_blocks"].higher_is_better is False and REGISTRY["distinct_2"].higher_is_better is True


def test_the_catalogue_is_the_one_list_of_columns_and_each_table_a_view_of_it():
    from lmcollapse.metrics import COLUMNS, shown_in
    from lmcollapse.metrics.columns import COMPARED, HEADLINE, TERMINAL

    assert all(c.definition for c in COLUMNS.values())
    assert set(REGISTRY) == {n for n, c in COLUMNS.items() if c.kind == "metric"}
    assert list(COLUMNS)[:2] == ["generation", "seed"]
    assert shown_in(TERMINAL) == ["ppl_blocks", "ppl_sliding", "self_bleu_4", "distinct_2", "tail_ppl_p50",
                                  "tail_ppl_p99", "rare_survival", "mauve", "train_loss", "train_seconds"]
    assert shown_in(HEADLINE) == ["ppl_blocks", "bits_per_byte", "ppl_sliding", "self_bleu_4", "distinct_2", "tail_ppl_p50", "rare_survival",
                                  "mauve", "watermark_ppl", "watermark_ppl_unbiased", "detector_classifier_auroc",
                                  "detector_perplexity_auroc", "detector_fast_detectgpt_auroc", "detector_watermark_auroc"]
    assert set(shown_in(COMPARED)) <= set(shown_in(HEADLINE)) <= set(REGISTRY)
    assert all(c.aggregation and c.higher_is_better is not None or c.name.startswith(("tail_ppl_", "watermark_ppl"))
               for c in REGISTRY.values())


@pytest.mark.parametrize("name", ["self_bleu", "distinct_n"])
def test_evaluate_modules_load_from_a_local_path(name):
    import evaluate

    from lmcollapse.metrics import evaluate_module_path

    texts = ["the cat sat on the mat", "the cat ran", "a dog ran on the mat", "the cat sat on the mat"]
    module = evaluate.load(evaluate_module_path(name))
    if name == "self_bleu":
        result = module.compute(predictions=texts, max_n=3, smoothing="method2")
        assert result == {"self_bleu": self_bleu(texts, max_n=3, smoothing="method2", num_samples=None), "samples": 4}
        assert module.compute(predictions=texts, num_samples=3, seed=1)["self_bleu"] == self_bleu(texts, num_samples=3, seed=1)
    else:
        result = module.compute(predictions=texts, max_n=2)
        assert result["distinct_2"] == distinct_n(texts, 2) and result["distinct_1_per_sample"] == distinct_n_per_sample(texts, 1)
        assert result["distinct_2_li"] == distinct_n_li(texts, 2) < result["distinct_2"]
        assert set(result) == {"distinct_1", "distinct_2", "distinct_1_li", "distinct_2_li",
                               "distinct_1_per_sample", "distinct_2_per_sample"}
