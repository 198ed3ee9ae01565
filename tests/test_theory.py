"""The closed-form cases: simulations agree with theory to within 4 standard errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmcollapse.theory import (
    TheorySettings,
    expected_loss_generation,
    expected_variance,
    expected_variance_keep,
    simulate_categorical,
    simulate_gaussian,
    survival_probability,
    write_theory_report,
    zipf_weights,
)


@pytest.mark.parametrize("samples, chains", [(5, 40_000), (20, 20_000), (100, 10_000)])
def test_gaussian_mean_variance_follows_the_closed_form(samples, chains):
    run = simulate_gaussian(samples, 20, chains, seed=samples)
    for n in (1, 5, 20):
        simulated, se = run.mean_variance()[n], run.standard_error()[n]
        assert abs(simulated - expected_variance(samples, n)) < 4 * se, (samples, n, simulated, se)
    assert run.mean_variance()[0] == 1.0


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
    for stem in ("gaussian_variance", "gaussian_collapsed_chains", "categorical_survival", "yellow_blue"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names and (tmp_path / f"{stem}.png").stat().st_size > 10_000
    table = (tmp_path / "theory.csv").read_text().splitlines()
    assert table[0] == "case,quantity,simulated,se,theory,z"
    z = [float(line.rsplit(",", 1)[1]) for line in table[1:] if line.rsplit(",", 1)[1] not in ("", "nan")]
    assert len(z) >= 10 and max(abs(v) for v in z) < 4
    assert "| gaussian replace | E[σ²_5], N=20 |" in (tmp_path / "theory.md").read_text()
