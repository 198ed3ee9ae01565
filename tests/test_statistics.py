"""The statistics of a study's report against scipy itself and against worked textbook examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lmcollapse.report.inference import smallest_permutation_p
from lmcollapse.report.statistics import SMALL_N, compare, hedges_g, holm, permutation_p, summarize

# Welch's t-test, the worked example of its Wikipedia article (example 1): two groups of 15,
# t = -2.46, Welch-Satterthwaite df = 24.99, two-sided p = 0.021.
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_welch_equals_the_textbook_example():
    result = compare(A1, A2)
    assert result.test == "welch"
    assert result.p_welch == pytest.approx(0.021, abs=5e-4)
    assert result.difference == pytest.approx(np.mean(A1) - np.mean(A2))
    # the interval is the difference ± t(0.975, df) * standard error, df from Welch-Satterthwaite
    va, vb = np.var(A1, ddof=1) / 15, np.var(A2, ddof=1) / 15
    df = (va + vb) ** 2 / (va**2 / 14 + vb**2 / 14)
    assert df == pytest.approx(24.99, abs=0.01)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (result.low, result.high) == pytest.approx((result.difference - half, result.difference + half))


def test_holm_equals_the_textbook_example():
    # Holm (1979) as worked in textbooks: p = 0.01, 0.04, 0.03, 0.005 at m = 4 -> 0.03, 0.06, 0.06, 0.02
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=8),
       st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=8))
def test_every_number_equals_scipys(a, b):
    result = compare(a, b)
    if np.std(a) > 0 or np.std(b) > 0:
        welch = stats.ttest_ind(a, b, equal_var=False)
        assert result.p_welch == pytest.approx(welch.pvalue, nan_ok=True)
        interval = welch.confidence_interval(0.95)
        assert (result.low, result.high) == pytest.approx((interval.low, interval.high), nan_ok=True)
    exact = stats.permutation_test((np.array(a), np.array(b)), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                   permutation_type="independent", n_resamples=np.inf, vectorized=True)
    if np.ptp(a + b) > 0:
        assert result.p_permutation == pytest.approx(exact.pvalue)
    assert result.test == ("permutation" if min(len(a), len(b)) < SMALL_N or math.isnan(result.p_welch) else "welch")
    summary = summarize(a)
    assert (summary.n, summary.mean) == (len(a), pytest.approx(np.mean(a)))
    if np.std(a) > 0:
        low, high = stats.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=stats.sem(a))
        assert (summary.low, summary.high) == pytest.approx((low, high))


def test_hedges_g_by_hand():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0, 6.0])
    # worked by hand: pooled s = sqrt((2 * 1 + 3 * 5/3) / 5) = sqrt(7/5); d = -2.5 / 1.18322 = -2.11289;
    # J = 1 - 3 / (4 * 7 - 9) = 16/19; g = -1.77928
    assert hedges_g(a, b) == pytest.approx(-1.77928, abs=1e-5)
    assert math.isnan(hedges_g(np.array([1.0, 1.0]), np.array([1.0, 1.0])))  # no spread: undefined


def test_three_seeds_cannot_reach_significance_by_permutation():
    # 3 against 3: 20 relabellings, the most extreme two-sided p is 2/20; the report says so instead of
    # pretending a t-test on three seeds is exact.
    assert permutation_p(np.array([1.0, 2.0, 3.0]), np.array([10.0, 11.0, 12.0])) == pytest.approx(0.1)
    assert compare([1.0, 2.0, 3.0], [10.0, 11.0, 12.0]).p == pytest.approx(0.1)


@pytest.mark.parametrize("n, m", [(2, 2), (3, 3), (2, 4), (4, 4)])
def test_the_smallest_permutation_p_is_that_of_two_groups_that_do_not_overlap(n, m):
    separated = permutation_p(np.arange(n, dtype=float), np.arange(m, dtype=float) + 100)
    assert smallest_permutation_p(n, m) == pytest.approx(separated)


def test_a_group_of_one_value_has_no_p_value_and_no_spread():
    """A variant with one finite seed (a study still running, the other seeds failed): scipy's
    permutation test refuses a sample of one; the comparison has no p-value instead of a crash."""
    result = compare([1.0], [2.0, 3.0, 4.0])
    assert math.isnan(result.p) and result.test == "permutation"
    assert result.difference == pytest.approx(-2.0)
    assert math.isnan(summarize([1.0]).std)  # one value: its spread is unknown, not 0


def test_groups_that_do_not_vary_are_decided_by_the_permutation_test_at_any_size():
    """Five seeds each, every seed the same within a group: Welch's t is undefined (no variance)
    and the exact permutation test decides: the most extreme of C(10, 5) = 252 relabellings."""
    result = compare([1.0] * 5, [2.0] * 5)
    assert math.isnan(result.p_welch) and result.test == "permutation"
    assert result.p == pytest.approx(2 / 252)


def test_holm_counts_only_the_comparisons_that_have_a_p_value():
    from lmcollapse.report.inference import Inference, infer, inference_tables
    from lmcollapse.report.runs import Group

    def group(label, values):
        class Record:
            def __init__(self, value):
                self.rows = [{"generation": 0, "ppl_blocks": value, "self_bleu_4": value / 1000}]
        return Group(label, [Record(v) for v in values])

    found = infer([group("ref", [100.0, 101.0, 102.0]), group("many", [110.0, 111.0, 112.0]), group("one", [120.0])],
                  ["ppl_blocks", "self_bleu_4"])
    assert isinstance(found, Inference)
    pvalues = [d.p for d in found.differences]
    assert len(pvalues) == 4 and sum(math.isnan(p) for p in pvalues) == 2  # "one" has none
    assert "Holm over the 2 comparisons" in inference_tables(found)["caption"]
    assert [d.p_holm for d in found.differences if d.group == "many"] == pytest.approx([0.2, 0.2])
