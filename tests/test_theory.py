"""The closed-form cases: simulations agree with theory to within 4 standard errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmcollapse.theory import (
    ESTIMATORS,
    TheorySettings,
    expected_log_variance,
    expected_loss_generation,
    expected_variance,
    expected_variance_keep,
    expected_wasserstein2_squared,
    log_chi_square_mean,
    log_chi_square_variance,
    log_variance_variance,
    ratio_moment,
    simulate_categorical,
    simulate_gaussian,
    survival_probability,
    variance_cdf,
    variance_moment,
    variance_quantile,
    variance_standard_error,
    wasserstein2_squared_variance,
    write_theory_report,
    zipf_weights,
)

EULER_GAMMA = 0.5772156649015329


@pytest.mark.parametrize("estimator", ["mle", "unbiased"])
@pytest.mark.parametrize("samples, chains", [(5, 40_000), (20, 20_000), (100, 10_000)])
def test_gaussian_mean_variance_follows_the_closed_form(estimator, samples, chains):
    run = simulate_gaussian(samples, 20, chains, seed=samples, estimator=estimator)
    for n in (1, 5, 20):
        # The exact standard error, from E[σ⁴_n]: at N = 5, n = 20 σ²_n is so heavy-tailed
        # (Var/E² = 1.5^20 - 1 ≈ 3300, for either estimator) that the sample one is unreliable.
        simulated, se = run.mean_variance()[n], variance_standard_error(samples, n, chains, estimator)
        assert abs(simulated - expected_variance(samples, n, estimator=estimator)) < 4 * se, (samples, n, simulated, se)
    assert run.mean_variance()[0] == 1.0
    assert run.estimator == estimator


def test_the_two_estimators_closed_forms():
    n = np.arange(30)
    assert np.allclose(expected_variance(20, n, estimator="mle"), (19 / 20) ** n)
    assert np.allclose(expected_variance(20, n, estimator="unbiased"), 1.0)  # constant in expectation
    assert expected_variance(20, 3, 2.0, "unbiased") == 2.0
    # E[(cχ²_k/k)²] with E[(χ²_k)²] = k(k+2); the Γ form agrees with the integer product.
    for samples, estimator, d in [(5, "mle", 5), (5, "unbiased", 4), (20, "unbiased", 19)]:
        k = samples - 1
        assert ratio_moment(samples, 2, estimator) == pytest.approx(k * (k + 2) / d**2, rel=1e-14)
        assert ratio_moment(samples, 1.0000000001, estimator) == pytest.approx(k / d, rel=1e-8)
        assert variance_moment(samples, 7, 2, estimator) == pytest.approx((k * (k + 2) / d**2) ** 7, rel=1e-12)
    with pytest.raises(ValueError):
        simulate_gaussian(5, 2, 10, estimator="median")


@pytest.mark.parametrize("samples, estimator", [(20, "mle"), (100, "unbiased")])
def test_second_moment_of_the_variance_follows_the_closed_form(samples, estimator):
    chains = 20_000
    run = simulate_gaussian(samples, 5, chains, seed=7, estimator=estimator)
    for n in (1, 5):
        squared = run.variances[n] ** 2
        se = math.sqrt((variance_moment(samples, n, 4, estimator) - variance_moment(samples, n, 2, estimator) ** 2) / chains)
        assert abs(squared.mean() - variance_moment(samples, n, 2, estimator)) < 4 * se, n
        # Light tails here: the sample standard error agrees with the exact one.
        assert run.standard_error()[n] == pytest.approx(variance_standard_error(samples, n, chains, estimator), rel=0.1)


def test_log_chi_square_mean_is_digamma_plus_ln_2():
    # Known values: ψ(1/2) = -γ - 2 ln 2, ψ(1) = -γ, ψ(3/2) = 2 - γ - 2 ln 2; ψ'(1/2) = π²/2, ψ'(1) = π²/6.
    assert log_chi_square_mean(1) == pytest.approx(-EULER_GAMMA - math.log(2), abs=1e-12)
    assert log_chi_square_mean(2) == pytest.approx(math.log(2) - EULER_GAMMA, abs=1e-12)
    assert log_chi_square_mean(3) == pytest.approx(2 - EULER_GAMMA - math.log(2), abs=1e-12)
    assert log_chi_square_variance(1) == pytest.approx(math.pi**2 / 2, abs=1e-12)
    assert log_chi_square_variance(2) == pytest.approx(math.pi**2 / 6, abs=1e-12)
    assert log_chi_square_mean(1000) == pytest.approx(math.log(1000) - 1 / 1000, abs=1e-6)  # ψ(x) ≈ ln x - 1/2x
    # ln σ²_n drifts down for both estimators at every N: σ²_n → 0 almost surely.
    for samples in (2, 3, 5, 20, 100, 10_000):
        for estimator in ESTIMATORS:
            assert expected_log_variance(samples, 1, estimator) < 0, (samples, estimator)


@pytest.mark.parametrize("estimator", ["mle", "unbiased"])
@pytest.mark.parametrize("samples, chains", [(5, 20_000), (20, 10_000)])
def test_mean_log_variance_follows_the_digamma_closed_form(estimator, samples, chains):
    run = simulate_gaussian(samples, 20, chains, seed=11 + samples, estimator=estimator)
    for n in (1, 5, 20):
        se = math.sqrt(log_variance_variance(samples, n) / chains)
        expected = expected_log_variance(samples, n, estimator)
        assert abs(run.mean_log_variance()[n] - expected) < 4 * se, (n, run.mean_log_variance()[n], expected, se)
        assert np.log(run.variances[n]).std() == pytest.approx(math.sqrt(log_variance_variance(samples, n)), rel=0.05)


def test_the_distribution_of_the_variance_is_exact():
    from scipy import stats

    x = np.array([0.05, 0.5, 1.0, 2.0])
    for samples, estimator, d in [(3, "mle", 3), (10, "unbiased", 9), (50, "mle", 50)]:
        assert np.allclose(variance_cdf(x, samples, 1, estimator), stats.chi2.cdf(d * x, samples - 1), atol=1e-9)
    # Medians of the two estimators differ by exactly (N/(N-1))^n, as their chains do.
    assert variance_quantile(0.5, 10, 12, "unbiased") == pytest.approx(
        (10 / 9) ** 12 * variance_quantile(0.5, 10, 12, "mle"), rel=1e-8)
    chains = 20_000
    run = simulate_gaussian(10, 20, chains, seed=12, estimator="unbiased")
    for n in (5, 20):
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            below = (run.variances[n] < variance_quantile(q, 10, n, "unbiased")).mean()
            assert abs(below - q) < 4 * math.sqrt(q * (1 - q) / chains), (n, q, below)


def test_unbiased_refit_keeps_the_mean_while_the_median_falls():
    samples, chains, shown = 10, 20_000, [1, 5, 10, 20, 40]
    run = simulate_gaussian(samples, 40, chains, seed=13, estimator="unbiased")
    medians = run.median_variance()[shown]
    assert medians[0] < 1.0 and np.all(np.diff(medians) < 0), medians  # below σ²_0, and still falling
    assert medians[-1] < 0.25
    exact = [variance_quantile(0.5, samples, n, "unbiased") for n in shown]
    assert np.all(np.diff(exact) < 0) and exact[-1] < 0.25
    # ... while the mean does not fall: every generation agrees with E[σ²_n] = σ²_0 = 1.
    for n in shown:
        assert abs(run.mean_variance()[n] - 1.0) < 4 * variance_standard_error(samples, n, chains, "unbiased"), n
    # Most chains end below where they started, more of them every generation.
    below = run.fraction_below(1.0)[shown]
    assert np.all(np.diff(below) > 0) and below[-1] > 0.75
    assert below[-1] == pytest.approx(float(variance_cdf(1.0, samples, 40, "unbiased")), abs=4 * math.sqrt(0.25 / chains))


def test_tiny_variances_are_not_rounded_to_zero():
    # N = 2, 50 generations: the median σ²_50 is ~4e-43 while μ_50 is O(1). Refitting x = μ + σz
    # directly would round most chains to exactly 0 (σ < 1e-8 |μ|); the fit from z keeps them.
    chains = 4_000
    run = simulate_gaussian(2, 50, chains, seed=17)
    assert (run.variances > 0).all()
    below = (run.variances[50] < variance_quantile(0.5, 2, 50)).mean()
    assert abs(below - 0.5) < 4 * math.sqrt(0.25 / chains)
    assert abs(run.mean_log_variance()[50] - expected_log_variance(2, 50)) < 4 * math.sqrt(log_variance_variance(2, 50) / chains)


@pytest.mark.parametrize("estimator", ["mle", "unbiased"])
def test_wasserstein_distance_to_the_truth_grows(estimator):
    samples, chains, shown = 20, 10_000, [1, 5, 20, 50]
    run = simulate_gaussian(samples, 50, chains, seed=14, estimator=estimator)
    w2 = run.wasserstein2()
    assert np.all(w2[0] == 0)
    assert np.all(np.diff(w2.mean(axis=1)[shown]) > 0) and np.all(np.diff(np.median(w2, axis=1)[shown]) > 0)
    expected = expected_wasserstein2_squared(samples, 50, estimator)
    se = np.sqrt(wasserstein2_squared_variance(samples, 50, estimator) / chains)
    for n in shown:
        assert abs((w2[n] ** 2).mean() - expected[n]) < 4 * se[n], (n, (w2[n] ** 2).mean(), expected[n], se[n])
    assert np.all(np.diff(expected) > 0)
    if estimator == "mle":  # E[W2²] = 2σ²_0 (1 - b^n) → 2σ²_0: the fit shrinks to a point near μ_0
        assert expected[-1] < 2 and expected_wasserstein2_squared(samples, 2_000, estimator)[-1] == pytest.approx(2)
    else:  # E[W2²] = σ²_0 (n/N + 2 - 2b^n): the mean's random walk has no bound
        assert np.allclose(expected[1:] - np.arange(1, 51) / samples, 2 - 2 * ratio_moment(samples, 0.5, estimator) ** np.arange(1, 51))


@pytest.mark.parametrize("samples, fraction", [(20, 0.1), (10, 0.5)])
def test_keeping_real_samples_stops_the_decay_at_a_positive_level(samples, fraction):
    generations = 100
    run = simulate_gaussian(samples, generations, 20_000, seed=1, regime="keep-fraction", real_fraction=fraction)
    expected = expected_variance_keep(samples, round(fraction * samples), generations)
    for n in (1, 5, 20, 100):
        assert abs(run.mean_variance()[n] - expected[n]) < 4 * run.standard_error()[n], n
    # The exact recursion has converged to a positive fixed point, far above the replace regime.
    fixed_point = expected[-1]
    assert fixed_point > 0.2 and abs(expected[-2] - fixed_point) < 1e-9
    assert fixed_point > 20 * expected_variance(samples, generations)
    assert run.mean_variance()[80:].min() > 0.8 * fixed_point


def test_without_real_samples_the_recursion_is_the_closed_form():
    assert np.allclose(expected_variance_keep(20, 0, 30), expected_variance(20, np.arange(31)))
    assert np.allclose(expected_variance_keep(20, 0, 30, estimator="unbiased"), 1.0)


def test_keeping_real_samples_with_the_unbiased_estimator_follows_the_recursion():
    run = simulate_gaussian(10, 20, 20_000, seed=15, regime="keep-fraction", real_fraction=0.5, estimator="unbiased")
    expected = expected_variance_keep(10, 5, 20, estimator="unbiased")
    for n in (1, 5, 20):
        assert abs(run.mean_variance()[n] - expected[n]) < 4 * run.standard_error()[n], n
    assert expected[1] == pytest.approx(1.0)  # unbiased when the previous fit is the truth
    accumulate = simulate_gaussian(10, 30, 5_000, seed=16, regime="accumulate", estimator="unbiased")
    assert accumulate.fraction_below(0.1)[-1] < 0.01


def test_accumulating_samples_does_not_collapse():
    replace = simulate_gaussian(10, 50, 5_000, seed=2)
    accumulate = simulate_gaussian(10, 50, 5_000, seed=3, regime="accumulate")
    assert replace.fraction_below(0.1)[-1] > 0.5          # most chains have collapsed
    assert accumulate.fraction_below(0.1)[-1] < 0.01     # almost none have
    assert accumulate.mean_variance()[-1] > 0.5


def test_category_survival_matches_one_minus_one_minus_w_to_the_n():
    weights = zipf_weights(20, 1.1)
    run = simulate_categorical(weights, samples=100, generations=60, chains=8_000, seed=4)
    chains = 8_000
    first = run.alive()[1]
    expected = survival_probability(weights, 100)
    se = np.sqrt(np.maximum(expected * (1 - expected), 1e-12) / chains)
    assert np.all(np.abs(first - expected) < 4 * se + 1e-12)
    # Every later generation: survival given each chain's current weight, 1 - (1 - w_n)^N.
    predicted = run.predicted_alive()
    p = 1.0 - (1.0 - run.weights[:-1]) ** 100
    se_later = np.sqrt((p * (1 - p)).sum(axis=1)) / chains
    assert np.all(np.abs(run.alive()[1:] - predicted) <= 4 * se_later + 1e-12)
    # The tail goes first: survival is ordered by weight at every generation.
    assert run.alive()[-1, 0] > run.alive()[-1, -1]


def test_yellow_blue_loss_probabilities():
    chains = 20_000
    run = simulate_categorical(np.array([0.9, 0.1]), samples=10, generations=300, chains=chains, seed=5)
    lost = run.loss_generation()[:, 1]
    at_one = (lost == 1).mean()
    assert abs(at_one - 0.9**10) < 4 * math.sqrt(0.9**10 * (1 - 0.9**10) / chains)
    eventually = (lost >= 0).mean()  # drift is a martingale: blue is lost with probability 1 - 0.1
    assert abs(eventually - 0.9) < 4 * math.sqrt(0.9 * 0.1 / chains) + 0.002


def test_expected_generation_of_loss_is_close_to_the_diffusion_approximation():
    samples, weight = 50, 0.1
    run = simulate_categorical(np.array([1 - weight, weight]), samples, 1_500, chains=4_000, seed=6)
    lost = run.loss_generation()[:, 1]
    mean = lost[lost >= 0].mean()
    assert abs(mean / expected_loss_generation(weight, samples) - 1) < 0.1  # an approximation, ~3% here


def test_theory_report_writes_figures_and_an_agreeing_table(tmp_path):
    settings = TheorySettings(chains=2_000, generations=20, categorical_generations=100)
    written = write_theory_report(tmp_path, settings)
    names = {p.name for p in written}
    for stem in ("gaussian_estimators", "gaussian_variance", "gaussian_collapsed_chains", "categorical_survival",
                 "yellow_blue"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names and (tmp_path / f"{stem}.png").stat().st_size > 10_000
    table = (tmp_path / "theory.csv").read_text().splitlines()
    assert table[0] == "case,quantity,simulated,se,theory,z"
    z = [float(line.rsplit(",", 1)[1]) for line in table[1:] if line.rsplit(",", 1)[1] not in ("", "nan")]
    assert len(z) >= 10 and max(abs(v) for v in z) < 4
    markdown = (tmp_path / "theory.md").read_text()
    assert "| gaussian replace, MLE ÷N | E[σ²_5], N=20 |" in markdown
    assert "| gaussian replace, unbiased ÷(N-1) | E[σ²_5], N=20 |" in markdown
    # Both estimators side by side, labelled, every statistic with a closed form agreeing.
    assert "| n | statistic | MLE (÷N, the course formula) | closed form | z | unbiased (÷(N-1), the paper's refit) |" in markdown
    assert "| 20 | median σ²_n |" in markdown and "| 20 | W2_n: mean · median |" in markdown
    import csv

    with open(tmp_path / "gaussian_estimators.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["estimator"] for r in rows} == {"mle", "unbiased"}
    z = [float(r["z"]) for r in rows if r["z"] != "nan"]
    assert len(z) >= 50 and max(abs(v) for v in z) < 4  # 9 statistics x 3 generations x 2 estimators
    means = {r["estimator"]: float(r["simulated"]) for r in rows if r["statistic"] == "mean σ²" and r["generation"] == "20"}
    medians = {r["estimator"]: float(r["simulated"]) for r in rows if r["statistic"] == "median σ²" and r["generation"] == "20"}
    assert means["unbiased"] > 0.8 and medians["unbiased"] < 0.6 and means["mle"] < 0.5


@pytest.mark.parametrize("arguments, message", [
    (["--seed", "-1"], "--seed must be a whole number from 0 to 2147483647, got -1"),
    (["--chains", "100000000000"], "needs ~"),
    (["--chains", "1"], "theory needs --chains >= 2"),
])
def test_theory_refuses_what_it_cannot_simulate_in_one_line_and_writes_nothing(tmp_path, capsys, arguments, message):
    from lmcollapse.cli import main

    out = tmp_path / "theory"
    assert main(["theory", "--out", str(out), *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert not out.exists()
    (tmp_path / "a-file").write_text("")
    assert main(["theory", "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file, not a folder: choose a folder, e.g. --out runs/theory" in capsys.readouterr().err
