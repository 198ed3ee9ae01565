"""The closed-form cases of model collapse, simulated with NumPy and checked against theory.

Two exactly solvable models explain why recursive training collapses (Shumailov et al. 2024):

* **Gaussian.** Each generation fits mean and variance to N samples drawn from the previous fit,
  with one of two variance estimators: the maximum-likelihood one (÷N, the course formula) or
  the unbiased one (÷(N-1), the paper's refit). Either way the ratio of successive variances is
  an independent c·χ²_{N-1}/(N-1), with c = (N-1)/N for the MLE and c = 1 for the unbiased
  estimator, so σ²_n/σ²_0 is a product of n of them:

  - E[σ²_n] = c^n σ²_0: the MLE shrinks in expectation, the unbiased estimator does not;
  - E[ln σ²_n] = ln σ²_0 + n (ψ((N-1)/2) + ln 2 - ln d), d = N or N-1 (ψ: digamma), which is
    negative for both: ln σ²_n is a random walk with negative drift, so σ²_n → 0 almost surely
    even when its mean is constant (the mean is carried by a thinning, ever heavier right tail);
  - every moment E[σ^{2p}_n] = (E[(χ²_{N-1}/d)^p])^n, and the whole distribution of σ²_n (its
    median and quantiles) by inverting the closed-form characteristic function of ln σ²_n;
  - the Wasserstein-2 distance from the fit N(μ_n, σ²_n) to the truth N(μ_0, σ²_0),
    W2² = (μ_n - μ_0)² + (σ_n - σ_0)², has E[W2²] = σ²_0 (Σ_{j<n} c^j / N + c^n - 2 b^n + 1),
    b = E[σ_1/σ_0] = √(2/d) Γ(N/2)/Γ((N-1)/2): it grows with n for both estimators, towards 2σ²_0
    for the MLE and without bound (about n/N) for the unbiased one.

  Keeping a fraction r of real samples stops the decay: the expected variance and squared mean
  follow an exact linear recursion (``expected_variance_keep``) whose fixed point is positive.
  Accumulating all samples (Gerstgrasser et al. 2024) keeps it from collapsing too.
* **Categorical** (a mixture's component weights, or a Zipf-tailed vocabulary). Refitting weights
  from N samples is Wright-Fisher drift: a component of weight w survives the next generation's
  sample with probability 1 - (1 - w)^N, is eventually lost with probability 1 - w, and when it
  is lost that takes about -2N w ln(w) / (1 - w) generations (Kimura & Ohta's diffusion
  approximation). Rare components go first: the tails vanish.

Thousands of independent chains are simulated at once, seeded.

    run = simulate_gaussian(samples=20, generations=50, chains=10_000, seed=0, estimator="unbiased")
    run.mean_variance()[5], expected_variance(20, 5, estimator="unbiased")     # both ≈ 1
    np.median(run.variances[50]), variance_quantile(0.5, 20, 50, "unbiased")  # both ≈ 0.07
    write_theory_report(Path("runs/theory"))     # what `make theory` does
"""

from __future__ import annotations

from lmcollapse.theory.categorical import (
    CategoricalRun,
    expected_loss_generation,
    simulate_categorical,
    survival_probability,
    zipf_weights,
)
from lmcollapse.theory.gaussian import (
    ESTIMATORS,
    SHORT_LABELS,
    GaussianRun,
    expected_log_variance,
    expected_variance,
    expected_variance_keep,
    expected_wasserstein2_squared,
    log_chi_square_mean,
    log_chi_square_variance,
    log_variance_variance,
    ratio_moment,
    simulate_gaussian,
    variance_cdf,
    variance_moment,
    variance_quantile,
    variance_standard_error,
    wasserstein2_squared_variance,
)
from lmcollapse.theory.report import TheorySettings, write_theory_report

__all__ = ["CategoricalRun", "ESTIMATORS", "GaussianRun", "SHORT_LABELS", "TheorySettings", "expected_log_variance", "expected_loss_generation", "expected_variance", "expected_variance_keep", "expected_wasserstein2_squared", "log_chi_square_mean", "log_chi_square_variance", "log_variance_variance", "ratio_moment", "simulate_categorical", "simulate_gaussian", "survival_probability", "variance_cdf", "variance_moment", "variance_quantile", "variance_standard_error", "wasserstein2_squared_variance", "write_theory_report", "zipf_weights"]
