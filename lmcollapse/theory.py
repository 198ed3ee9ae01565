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

import csv
import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcollapse.atomic import write_text_atomic

# ---------------------------------------------------------------------------- Gaussian

# How each generation refits the variance, and how reports label it.
ESTIMATORS = {"mle": "MLE (÷N, the course formula)", "unbiased": "unbiased (÷(N-1), the paper's refit)"}
SHORT_LABELS = {"mle": "MLE ÷N", "unbiased": "unbiased ÷(N-1)"}


def _divisor(samples: int, estimator: str) -> int:
    """d in σ² = Σ(x - x̄)²/d: N for the MLE, N - 1 for the unbiased estimator."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {sorted(ESTIMATORS)}")
    return samples if estimator == "mle" else samples - 1


@dataclass(frozen=True)
class GaussianRun:
    regime: str  # replace | keep-fraction | accumulate
    samples: int
    real_fraction: float
    variances: np.ndarray  # (generations + 1, chains); row 0 is the true distribution
    means: np.ndarray
    estimator: str = "mle"  # mle (÷N) | unbiased (÷(N-1))

    @property
    def generations(self) -> int:
        return self.variances.shape[0] - 1

    @property
    def chains(self) -> int:
        return self.variances.shape[1]

    def mean_variance(self) -> np.ndarray:
        return self.variances.mean(axis=1)

    def standard_error(self) -> np.ndarray:
        """The sample standard error of ``mean_variance``; unreliable where σ²_n is heavy-tailed
        (small N, many generations): ``variance_standard_error`` is the exact one."""
        return self.variances.std(axis=1, ddof=1) / math.sqrt(self.chains)

    def quantile_variance(self, q) -> np.ndarray:
        """Per generation, the q-quantile(s) of the fitted variance over chains: (len(q), generations + 1)."""
        return np.quantile(self.variances, q, axis=1)

    def median_variance(self) -> np.ndarray:
        return np.median(self.variances, axis=1)

    def mean_log_variance(self) -> np.ndarray:
        return np.log(self.variances).mean(axis=1)

    def fraction_below(self, threshold: float) -> np.ndarray:
        """Per generation, the fraction of chains whose fitted variance is below ``threshold``."""
        return (self.variances < threshold).mean(axis=1)

    def wasserstein2(self) -> np.ndarray:
        """(generations + 1, chains): W2 from each fit N(μ_n, σ²_n) to the truth N(μ_0, σ²_0).

        For 1-D Gaussians W2² = (μ_n - μ_0)² + (σ_n - σ_0)².
        """
        return np.sqrt((self.means - self.means[0]) ** 2 + (np.sqrt(self.variances) - np.sqrt(self.variances[0])) ** 2)


def log_chi_square_mean(degrees: int | float) -> float:
    """E[ln χ²_k] = ψ(k/2) + ln 2 (ψ: digamma)."""
    from scipy import special  # here, not at the top: the CLI imports this module for every verb

    return float(special.digamma(degrees / 2) + math.log(2))


def log_chi_square_variance(degrees: int | float) -> float:
    """Var[ln χ²_k] = ψ'(k/2) (ψ': trigamma)."""
    from scipy import special

    return float(special.polygamma(1, degrees / 2))


def ratio_moment(samples: int, power: float, estimator: str = "mle") -> float:
    """E[R^p] for one generation's variance ratio R = σ²_n/σ²_{n-1} = χ²_{N-1}/d.

    E[(χ²_k)^p] = 2^p Γ(k/2 + p)/Γ(k/2); for integer p that is k(k+2)...(k+2p-2).
    """
    k, d = samples - 1, _divisor(samples, estimator)
    if float(power).is_integer() and power >= 0:
        return math.prod((k + 2 * j) / d for j in range(int(power)))
    return math.exp(power * math.log(2 / d) + math.lgamma(k / 2 + power) - math.lgamma(k / 2))


def expected_variance(samples: int, generation: int | np.ndarray, sigma2: float = 1.0, estimator: str = "mle"):
    """E[σ²_n] when every generation refits only on its predecessor's samples.

    ((N-1)/N)^n σ²_0 for the MLE (÷N); σ²_0 at every n for the unbiased estimator (÷(N-1)).
    """
    return ((samples - 1) / _divisor(samples, estimator)) ** np.asarray(generation) * sigma2


def variance_moment(samples: int, generation: int | np.ndarray, power: float, estimator: str = "mle",
                    sigma2: float = 1.0):
    """E[(σ²_n)^p] = (E[R^p])^n σ^{2p}_0: the ratios of successive generations are independent."""
    return ratio_moment(samples, power, estimator) ** np.asarray(generation) * sigma2**power


def variance_standard_error(samples: int, generation: int | np.ndarray, chains: int, estimator: str = "mle",
                            sigma2: float = 1.0):
    """The exact standard error of the mean of σ²_n over ``chains`` chains: √((E[σ⁴_n] - E[σ²_n]²)/C)."""
    second = variance_moment(samples, generation, 2, estimator, sigma2)
    first = expected_variance(samples, generation, sigma2, estimator)
    return np.sqrt(np.maximum(second - first**2, 0.0) / chains)


def expected_log_variance(samples: int, generation: int | np.ndarray, estimator: str = "mle", sigma2: float = 1.0):
    """E[ln σ²_n] = ln σ²_0 + n (ψ((N-1)/2) + ln 2 - ln d): negative drift for both estimators.

    By Jensen E[ln R] < ln E[R] = ln((N-1)/d) ≤ 0, so ln σ²_n drifts to -∞ and σ²_n → 0 almost
    surely (strong law of large numbers), even for the unbiased estimator whose E[σ²_n] is constant.
    """
    drift = log_chi_square_mean(samples - 1) - math.log(_divisor(samples, estimator))
    return math.log(sigma2) + drift * np.asarray(generation)


def log_variance_variance(samples: int, generation: int | np.ndarray):
    """Var[ln σ²_n] = n ψ'((N-1)/2), the same for both estimators (they differ by a constant factor)."""
    return log_chi_square_variance(samples - 1) * np.asarray(generation)


@functools.lru_cache(maxsize=512)
def _inversion_grid(samples: int, generation: int, estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes t, weights w and the characteristic function φ_n(t) of ln(σ²_n/σ²_0) on [0, T].

    φ_n(t) = E[R^{it}]^n = ((2/d)^{it} Γ((N-1)/2 + it)/Γ((N-1)/2))^n; |φ_n| decreases in t, and T is
    where it falls below 1e-17. Composite 16-point Gauss-Legendre over 256 panels.
    """
    from scipy import special

    k, d = samples - 1, _divisor(samples, estimator)
    a = k / 2

    def log_phi(t):
        return generation * (1j * t * math.log(2 / d) + special.loggamma(a + 1j * t) - special.loggamma(a))

    high = 1.0
    while log_phi(high).real > -40.0:
        high *= 2.0
    nodes, weights = np.polynomial.legendre.leggauss(16)
    edges = np.linspace(0.0, high, 257)
    half = np.diff(edges)[:, None] / 2
    t = (edges[:-1, None] + half * (nodes[None, :] + 1)).ravel()
    w = (half * weights[None, :]).ravel()
    return t, w, np.exp(log_phi(t))


def variance_cdf(x, samples: int, generation: int, estimator: str = "mle", sigma2: float = 1.0):
    """P(σ²_n ≤ x), exact up to quadrature error (~1e-10), by Gil-Pelaez inversion of φ_n:

    F(y) = 1/2 - (1/π) ∫_0^∞ Im(e^{-ity} φ_n(t)) / t dt,  y = ln(x/σ²_0).
    """
    x = np.asarray(x, dtype=np.float64)
    if generation == 0:
        return (x >= sigma2).astype(np.float64)
    y = np.log(np.maximum(x, 1e-300) / sigma2).ravel()
    t, w, phi = _inversion_grid(samples, int(generation), estimator)
    integrand = (np.exp(-1j * np.outer(y, t)) * phi[None, :]).imag / t[None, :]
    cdf = 0.5 - integrand @ w / math.pi
    return np.clip(cdf, 0.0, 1.0).reshape(x.shape)


def variance_quantile(q: float, samples: int, generation: int, estimator: str = "mle", sigma2: float = 1.0) -> float:
    """The q-quantile of σ²_n (the median for q = 1/2), by root-finding on ``variance_cdf``.

    The estimators' quantiles differ by exactly the factor (N/(N-1))^n, as do their σ²_n.
    """
    from scipy import optimize

    if not 0.0 < q < 1.0:
        raise ValueError("q must be strictly between 0 and 1")
    if generation == 0:
        return sigma2
    mean = float(expected_log_variance(samples, generation, estimator))
    spread = 12.0 * math.sqrt(float(log_variance_variance(samples, generation)))
    low, high = mean - spread, mean + spread
    while variance_cdf(math.exp(low), samples, generation, estimator) > q:
        low -= spread
    while variance_cdf(math.exp(high), samples, generation, estimator) < q:
        high += spread
    y = optimize.brentq(lambda y: float(variance_cdf(math.exp(y), samples, generation, estimator)) - q,
                        low, high, xtol=1e-10)
    return sigma2 * math.exp(y)


def _joint_moments(samples: int, generations: int, estimator: str, order: int = 4) -> list[dict]:
    """E[μ_n^a σ_n^b] for a + b ≤ ``order``, n = 0..generations, starting from μ_0 = 0, σ_0 = 1.

    μ_n = μ_{n-1} + σ_{n-1} Z/√N and σ_n = σ_{n-1} √R with Z ~ N(0, 1) and R = χ²_{N-1}/d
    independent of each other and of the past, so
    E[μ_n^a σ_n^b] = E[R^{b/2}] Σ_j C(a, j) E[Z^j] N^{-j/2} E[μ_{n-1}^{a-j} σ_{n-1}^{b+j}].
    """
    z = [1.0, 0.0, 1.0, 0.0, 3.0, 0.0, 15.0]
    keys = [(a, b) for a in range(order + 1) for b in range(order + 1 - a)]
    r = {b: ratio_moment(samples, b / 2, estimator) for b in range(order + 1)}
    current = {(a, b): 1.0 if a == 0 else 0.0 for a, b in keys}
    out = [current]
    for _ in range(generations):
        current = {(a, b): r[b] * sum(math.comb(a, j) * z[j] * samples ** (-j / 2) * current[(a - j, b + j)]
                                      for j in range(a + 1))
                   for a, b in keys}
        out.append(current)
    return out


def expected_wasserstein2_squared(samples: int, generations: int, estimator: str = "mle",
                                  sigma2: float = 1.0) -> np.ndarray:
    """E[W2²_n], n = 0..generations: σ²_0 (Σ_{j<n} c^j/N + c^n - 2 b^n + 1), c = (N-1)/d, b = E[√R].

    E[(μ_n - μ_0)²] = σ²_0 Σ_{j<n} c^j/N (a random walk whose steps have variance E[σ²_j]/N) and
    E[(σ_n - σ_0)²] = σ²_0 (c^n - 2 b^n + 1). MLE: 2σ²_0 (1 - b^n) → 2σ²_0. Unbiased: σ²_0 (n/N + 2 - 2b^n).
    """
    n = np.arange(generations + 1)
    c, b = (samples - 1) / _divisor(samples, estimator), ratio_moment(samples, 0.5, estimator)
    walk = n / samples if c == 1 else (1 - c**n) / (1 - c) / samples
    return sigma2 * (walk + c**n - 2 * b**n + 1)


def wasserstein2_squared_variance(samples: int, generations: int, estimator: str = "mle",
                                  sigma2: float = 1.0) -> np.ndarray:
    """Var[W2²_n], n = 0..generations, exactly, from the joint moments E[μ^a σ^b] up to order 4."""
    out = []
    for m in _joint_moments(samples, generations, estimator):
        # W2² = μ² + (σ - 1)²; W2⁴ = μ⁴ + 2μ²(σ - 1)² + (σ - 1)⁴.
        first = m[(2, 0)] + m[(0, 2)] - 2 * m[(0, 1)] + 1
        fourth = (m[(4, 0)] + 2 * (m[(2, 2)] - 2 * m[(2, 1)] + m[(2, 0)])
                  + m[(0, 4)] - 4 * m[(0, 3)] + 6 * m[(0, 2)] - 4 * m[(0, 1)] + 1)
        out.append(max(fourth - first**2, 0.0))
    return sigma2**2 * np.array(out)


def expected_variance_keep(samples: int, real: int, generations: int, sigma2: float = 1.0,
                           estimator: str = "mle") -> np.ndarray:
    """E[σ²_n], n = 0..generations, when ``real`` of the N samples come from the true N(0, σ²_0).

    With k real and N-k synthetic samples from N(μ, v), the MLE variance has expectation
    ((1 - 1/N)(k σ²_0 + (N-k) v) + k(N-k)/N · μ²) / N (the unbiased one N/(N-1) times that), and
    the new mean has second moment ((N-k)/N)² μ² + (k σ²_0 + (N-k) v)/N². Both are linear in
    (E v, E μ²), so iterating them gives the exact expectation; for k > 0 the fixed point is positive.
    """
    n, k = samples, real
    scale = n / _divisor(samples, estimator)
    v, m2 = sigma2, 0.0
    out = [v]
    for _ in range(generations):
        pooled = k * sigma2 + (n - k) * v
        v, m2 = (scale * ((1 - 1 / n) * pooled + k * (n - k) / n * m2) / n,
                 ((n - k) / n) ** 2 * m2 + pooled / n**2)
        out.append(v)
    return np.array(out)


def simulate_gaussian(samples: int, generations: int, chains: int, seed: int = 0, sigma2: float = 1.0,
                      regime: str = "replace", real_fraction: float = 0.0, estimator: str = "mle") -> GaussianRun:
    """Refit N(μ, σ²) generation after generation, in ``chains`` independent chains.

    ``estimator``: ``mle`` divides the sum of squared deviations by the number of samples it was
    fitted on (N), ``unbiased`` by one less (N - 1, Shumailov et al.'s refit).
    ``replace``: N samples from the last fit. ``keep-fraction``: round(r N) of them from the true
    distribution, the rest from the last fit. ``accumulate``: generation 1 fits N real samples;
    every later one adds N samples from the last fit and refits on everything so far.
    """
    if regime not in ("replace", "keep-fraction", "accumulate"):
        raise ValueError(f"unknown regime {regime!r}")
    if samples < 2:
        raise ValueError("samples must be at least 2")
    ddof = samples - _divisor(samples, estimator)  # 0 (MLE) or 1 (unbiased)
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(sigma2)
    real = int(round(real_fraction * samples)) if regime == "keep-fraction" else 0
    mean, var = np.zeros(chains), np.full(chains, sigma2)
    means, variances = [mean.copy()], [var.copy()]
    total = sum_x = sum_x2 = None
    for generation in range(1, generations + 1):
        if regime == "accumulate":
            if generation == 1:
                x = sigma * rng.standard_normal((chains, samples))
            else:
                x = mean[:, None] + np.sqrt(var)[:, None] * rng.standard_normal((chains, samples))
            total = samples * generation
            sum_x = x.sum(axis=1) + (0 if sum_x is None else sum_x)
            sum_x2 = (x**2).sum(axis=1) + (0 if sum_x2 is None else sum_x2)
            mean = sum_x / total
            var = np.maximum(sum_x2 / total - mean**2, 0.0) * (total / (total - ddof))
        elif real == 0:
            # x = μ + σz refitted, computed from z: the same draws and the same fit, without the
            # cancellation that rounds σ² to 0 once σ falls below 1e-8 |μ| (N = 2 or 3, many generations).
            z = rng.standard_normal((chains, samples))
            mean, var = mean + np.sqrt(var) * z.mean(axis=1), var * z.var(axis=1, ddof=ddof)
        else:
            synthetic = mean[:, None] + np.sqrt(var)[:, None] * rng.standard_normal((chains, samples - real))
            x = np.concatenate([sigma * rng.standard_normal((chains, real)), synthetic], axis=1)
            mean, var = x.mean(axis=1), x.var(axis=1, ddof=ddof)
        means.append(mean.copy())
        variances.append(var.copy())
    return GaussianRun(regime, samples, real / samples, np.array(variances), np.array(means), estimator)


# ---------------------------------------------------------------------------- categorical

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


# ---------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class TheorySettings:
    chains: int = 10_000
    generations: int = 50
    samples: int = 20  # N for the Gaussian chains
    real_fraction: float = 0.1
    categories: int = 20
    zipf_exponent: float = 1.1
    categorical_samples: int = 100
    categorical_generations: int = 400
    seed: int = 0


QUANTILES = (0.05, 0.25, 0.75, 0.95)  # of σ²_n over chains, in the estimators' table


def write_theory_report(out: Path, settings: TheorySettings = TheorySettings()) -> list[Path]:
    """Simulate every case, write the figures (PNG + SVG) and the tables (Markdown + CSV)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from lmcollapse.plotting import PALETTE, new_figure, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings
    written: list[Path] = []
    gaussian = {regime: simulate_gaussian(s.samples, s.generations, s.chains, s.seed + i, regime=regime,
                                          real_fraction=s.real_fraction)
                for i, regime in enumerate(("replace", "keep-fraction", "accumulate"))}
    replace = {"mle": gaussian["replace"],
               "unbiased": simulate_gaussian(s.samples, s.generations, s.chains, s.seed + 3, estimator="unbiased")}
    generations = np.arange(s.generations + 1)
    real = int(round(s.real_fraction * s.samples))
    theory_curves = {"replace": expected_variance(s.samples, generations),
                     "keep-fraction": expected_variance_keep(s.samples, real, s.generations)}
    colours = {"mle": PALETTE[0], "unbiased": PALETTE[1]}

    # The two estimators side by side: σ²_n (mean, median, spread) and W2 to the truth.
    fig, axes = new_figure(f"Gaussian refitted on its own N = {s.samples} samples, two variance estimators "
                           f"({s.chains:,} chains each)", "generation", "", ncols=2, width=12.5)
    for estimator, run in replace.items():
        colour = colours[estimator]
        low, high = run.quantile_variance([0.05, 0.95])
        axes[0].fill_between(generations, low, high, color=colour, alpha=0.12, linewidth=0)
        axes[0].plot(generations, run.mean_variance(), color=colour)
        axes[0].plot(generations, expected_variance(s.samples, generations, estimator=estimator), color=colour,
                     linestyle="--", linewidth=1)
        axes[0].plot(generations, run.median_variance(), color=colour, linestyle=":")
        marked = generations[:: max(1, s.generations // 10)]
        axes[0].plot(marked, [variance_quantile(0.5, s.samples, int(n), estimator) for n in marked], color=colour,
                     linestyle="none", marker="o", markerfacecolor="none", markersize=4)
        w2 = run.wasserstein2()
        low, high = np.quantile(w2, [0.05, 0.95], axis=1)
        axes[1].fill_between(generations, low, high, color=colour, alpha=0.12, linewidth=0)
        axes[1].plot(generations, w2.mean(axis=1), color=colour)
        axes[1].plot(generations, np.sqrt(expected_wasserstein2_squared(s.samples, s.generations, estimator)),
                     color=colour, linestyle="--", linewidth=1)
        axes[1].plot(generations, np.median(w2, axis=1), color=colour, linestyle=":")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("fitted variance σ²_n (true σ²_0 = 1)")
    axes[1].set_ylabel("W2(N(μ_n, σ²_n), N(μ_0, σ²_0))")
    estimators = [Patch(color=colours[e], label=ESTIMATORS[e]) for e in replace]
    grey = "#555555"
    fig.legend(handles=estimators + [
        Line2D([], [], color=grey, label="mean over chains"),
        Line2D([], [], color=grey, linestyle="--", linewidth=1, label="closed form: E[σ²_n] (left), √E[W2²_n] (right)"),
        Line2D([], [], color=grey, linestyle=":", label="median over chains"),
        Line2D([], [], color=grey, linestyle="none", marker="o", markerfacecolor="none", label="exact median of σ²_n"),
        Patch(color=grey, alpha=0.2, label="5th-95th percentile of chains")],
        loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False, fontsize=8)
    written += save_figure(fig, out / "gaussian_estimators")

    fig, ax = new_figure(f"Gaussian refitted by MLE (÷N) on N = {s.samples} samples per generation "
                         f"({s.chains:,} chains)", "generation", "fitted variance σ² (true σ² = 1)")
    labels = {"replace": "replace", "keep-fraction": f"keep {s.real_fraction:.0%} real", "accumulate": "accumulate"}
    for colour, (regime, run) in zip(PALETTE, gaussian.items()):
        low, high = np.percentile(run.variances, [10, 90], axis=1)
        ax.fill_between(generations, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.plot(generations, run.mean_variance(), color=colour, label=f"{labels[regime]}: mean over chains")
        if regime in theory_curves:
            ax.plot(generations, theory_curves[regime], color=colour, linestyle="--", linewidth=1,
                    label=f"{labels[regime]}: closed form")
    ax.set_yscale("log")
    ax.legend(title="shaded: 10th-90th percentile of chains")
    written += save_figure(fig, out / "gaussian_variance")

    threshold = 0.1
    fig, ax = new_figure(f"Chains whose variance fell below {threshold} (true 1)", "generation", "fraction of chains")
    curves = [(f"replace, {ESTIMATORS['mle']}", replace["mle"], "mle"),
              (f"replace, {ESTIMATORS['unbiased']}", replace["unbiased"], "unbiased"),
              (f"keep {s.real_fraction:.0%} real, MLE (÷N)", gaussian["keep-fraction"], None),
              ("accumulate, MLE (÷N)", gaussian["accumulate"], None)]
    for colour, (label, run, estimator) in zip(PALETTE, curves):
        ax.plot(generations, run.fraction_below(threshold), color=colour, label=label)
        if estimator:
            exact = [float(variance_cdf(threshold, s.samples, int(n), estimator)) for n in generations]
            ax.plot(generations, exact, color=colour, linestyle="--", linewidth=1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(title="dashed: exact probability (replace)", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    written += save_figure(fig, out / "gaussian_collapsed_chains")

    zipf = zipf_weights(s.categories, s.zipf_exponent)
    categorical = simulate_categorical(zipf, s.categorical_samples, s.categorical_generations, s.chains // 4, s.seed + 10)
    shown = [0, s.categories // 4, s.categories // 2, s.categories - 1]
    steps = np.arange(categorical.generations + 1)
    fig, ax = new_figure(f"Zipf({s.zipf_exponent}) categories refitted on N = {s.categorical_samples} samples",
                         "generation (log scale after 10)", "fraction of chains where the category survives",
                         width=8.6)
    predicted = categorical.predicted_alive()
    for colour, k in zip(PALETTE, shown):
        ax.plot(steps, categorical.alive()[:, k], color=colour, label=f"rank {k + 1}, w = {zipf[k]:.3f}")
        ax.plot(steps[1:], predicted[:, k], color=colour, linestyle=":", linewidth=1)
        ax.axvline(expected_loss_generation(zipf[k], s.categorical_samples), color=colour, linestyle="--",
                   linewidth=0.8, alpha=0.6)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, steps[-1])
    ax.legend(title="solid: simulated\ndotted: mean of 1-(1-w)^N\ndashed: expected loss time",
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written += save_figure(fig, out / "categorical_survival")

    yellow_blue = simulate_categorical(np.array([0.9, 0.1]), 10, 60, s.chains, s.seed + 20)
    lost = 1.0 - yellow_blue.alive()[:, 1]
    fig, axes = new_figure("90% yellow / 10% blue, refitted on N = 10 samples", "generation", "", ncols=2, width=10.5)
    axes[0].plot(np.arange(61), lost, color=PALETTE[0], label="simulated")
    axes[0].axhline(0.9, color=PALETTE[1], linestyle="--", label="eventual loss: 1 - w = 0.9")
    axes[0].scatter([1], [0.9**10], color=PALETTE[2], zorder=3, label=f"generation 1: 0.9^10 = {0.9**10:.3f}")
    axes[0].set_ylabel("fraction of chains that lost blue")
    axes[0].legend()
    for colour, chain in zip(PALETTE, range(6)):
        axes[1].plot(np.arange(61), yellow_blue.weights[:, chain, 1], color=colour, alpha=0.8)
    axes[1].set_ylabel("weight of blue in six chains")
    written += save_figure(fig, out / "yellow_blue")

    estimator_rows = gaussian_estimator_rows(replace, s)
    rows = theory_table(gaussian, theory_curves, categorical, yellow_blue, s, replace)
    written += _write_tables(out, rows, estimator_rows, s)
    return written


def _shown_generations(s: TheorySettings) -> list[int]:
    return sorted({n for n in (1, 5, 20, s.generations) if n <= s.generations})


def gaussian_estimator_rows(replace: dict[str, GaussianRun], s: TheorySettings) -> list[dict]:
    """Long-form rows (estimator, generation, statistic, simulated, se, theory, z) for both estimators.

    z is (simulated - theory)/se with the exact standard error where the theory gives one; for a
    median or quantile, z compares the fraction of chains below the exact quantile with q.
    """
    rows = []
    for estimator, run in replace.items():
        chains, log_run, w2 = run.chains, np.log(run.variances), run.wasserstein2()
        w2_squared = expected_wasserstein2_squared(s.samples, s.generations, estimator)
        w2_squared_se = np.sqrt(wasserstein2_squared_variance(s.samples, s.generations, estimator) / chains)

        def row(n, statistic, simulated, se=float("nan"), theory=float("nan"), z=None, estimator=estimator):
            if z is None:
                z = (simulated - theory) / se if se > 0 and not math.isnan(theory) else float("nan")
            return {"estimator": estimator, "generation": n, "statistic": statistic, "simulated": float(simulated),
                    "se": float(se), "theory": float(theory), "z": float(z)}

        for n in _shown_generations(s):
            variances = run.variances[n]
            rows.append(row(n, "mean σ²", variances.mean(), float(variance_standard_error(s.samples, n, chains, estimator)),
                            float(expected_variance(s.samples, n, estimator=estimator))))
            for q, name in [(0.5, "median σ²")] + [(q, f"quantile {q:.0%} σ²") for q in QUANTILES]:
                exact = variance_quantile(q, s.samples, n, estimator)
                below = (variances < exact).mean()
                rows.append(row(n, name, np.quantile(variances, q), theory=exact,
                                z=(below - q) / math.sqrt(q * (1 - q) / chains)))
            p = float(variance_cdf(1.0, s.samples, n, estimator))
            se = math.sqrt(p * (1 - p) / chains)
            rows.append(row(n, "P(σ² < σ²_0)", (variances < 1.0).mean(), se, p))
            rows.append(row(n, "mean ln σ²", log_run[n].mean(), math.sqrt(float(log_variance_variance(s.samples, n)) / chains),
                            float(expected_log_variance(s.samples, n, estimator))))
            rows.append(row(n, "mean W2", w2[n].mean(), w2[n].std(ddof=1) / math.sqrt(chains)))
            rows.append(row(n, "median W2", np.median(w2[n])))
            rows.append(row(n, "mean W2²", (w2[n] ** 2).mean(), w2_squared_se[n], w2_squared[n]))
    return rows


def theory_table(gaussian, theory_curves, categorical, yellow_blue, s: TheorySettings,
                 replace: dict[str, GaussianRun] | None = None) -> list[dict]:
    rows = []
    replace = replace or {"mle": gaussian["replace"]}
    for estimator, run in replace.items():
        for n in _shown_generations(s):
            simulated = run.mean_variance()[n]
            se = float(variance_standard_error(s.samples, n, run.chains, estimator))  # exact: heavy tails
            expected = float(expected_variance(s.samples, n, estimator=estimator))
            rows.append({"case": f"gaussian replace, {SHORT_LABELS[estimator]}", "quantity": f"E[σ²_{n}], N={s.samples}",
                         "simulated": simulated, "se": se, "theory": expected, "z": (simulated - expected) / se})
    run = gaussian["keep-fraction"]
    for n in _shown_generations(s):
        simulated, se, expected = run.mean_variance()[n], run.standard_error()[n], theory_curves["keep-fraction"][n]
        rows.append({"case": "gaussian keep-fraction, MLE ÷N", "quantity": f"E[σ²_{n}], N={s.samples}",
                     "simulated": simulated, "se": se, "theory": expected, "z": (simulated - expected) / se})
    rows.append({"case": "gaussian accumulate, MLE ÷N", "quantity": f"E[σ²_{s.generations}], N={s.samples}",
                 "simulated": gaussian["accumulate"].mean_variance()[-1], "se": gaussian["accumulate"].standard_error()[-1],
                 "theory": float("nan"), "z": float("nan")})
    chains = categorical.weights.shape[1]
    losses = categorical.loss_generation()
    for k in (0, s.categories // 2, s.categories - 1):
        w = categorical.initial[k]
        alive1 = categorical.alive()[1, k]
        rows.append({"case": "categorical", "quantity": f"survives generation 1, w={w:.4f}",
                     "simulated": alive1, "se": math.sqrt(alive1 * (1 - alive1) / chains),
                     "theory": float(survival_probability(w, s.categorical_samples)),
                     "z": _z(alive1, float(survival_probability(w, s.categorical_samples)), chains)})
        lost = losses[:, k] >= 0
        rows.append({"case": "categorical", "quantity": f"lost by generation {s.categorical_generations} (theory: ever), w={w:.4f}",
                     "simulated": lost.mean(), "se": math.sqrt(lost.mean() * (1 - lost.mean()) / chains),
                     "theory": 1 - w, "z": float("nan")})
        if lost.any():
            times = losses[lost, k]
            rows.append({"case": "categorical", "quantity": f"generation of loss (if lost), w={w:.4f}",
                         "simulated": times.mean(), "se": times.std(ddof=1) / math.sqrt(len(times)) if len(times) > 1 else float("nan"),
                         "theory": expected_loss_generation(w, s.categorical_samples), "z": float("nan")})
    blue_lost = yellow_blue.loss_generation()[:, 1]
    rows.append({"case": "yellow/blue", "quantity": "blue lost at generation 1 (N=10)",
                 "simulated": (blue_lost == 1).mean(), "se": float("nan"), "theory": 0.9**10, "z": float("nan")})
    rows.append({"case": "yellow/blue", "quantity": "blue lost within 60 generations",
                 "simulated": (blue_lost >= 0).mean(), "se": float("nan"), "theory": 0.9, "z": float("nan")})
    return rows


def _z(simulated: float, expected: float, chains: int) -> float:
    se = math.sqrt(max(expected * (1 - expected), 1e-12) / chains)
    return (simulated - expected) / se


def _cell(value, digits: int = 4) -> str:
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _estimators_markdown(estimator_rows: list[dict], s: TheorySettings) -> list[str]:
    """The side-by-side table: one row per (generation, statistic), one column group per estimator."""
    index = {(r["estimator"], r["generation"], r["statistic"]): r for r in estimator_rows}
    estimators = [e for e in ESTIMATORS if any(r["estimator"] == e for r in estimator_rows)]
    shown = [
        ("mean σ²_n", ["mean σ²"]),
        ("median σ²_n", ["median σ²"]),
        (" · ".join(f"{q:.0%}" for q in QUANTILES) + " quantiles of σ²_n", [f"quantile {q:.0%} σ²" for q in QUANTILES]),
        ("P(σ²_n < σ²_0)", ["P(σ² < σ²_0)"]),
        ("mean ln σ²_n", ["mean ln σ²"]),
        ("W2_n: mean · median", ["mean W2", "median W2"]),
        ("mean W2²_n", ["mean W2²"]),
    ]
    header = ["n", "statistic"]
    for e in estimators:
        header += [ESTIMATORS[e], "closed form", "z"]
    lines = ["| " + " | ".join(header) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |"]
    for n in _shown_generations(s):
        for label, statistics in shown:
            cells = [str(n), label]
            for e in estimators:
                rows = [index[(e, n, statistic)] for statistic in statistics]
                digits = 3 if len(rows) > 2 else 4
                cells.append(" · ".join(_cell(r["simulated"], digits) for r in rows))
                theories = [r["theory"] for r in rows]
                cells.append("-" if all(math.isnan(t) for t in theories)
                             else " · ".join(_cell(t, digits) for t in theories))
                zs = [r["z"] for r in rows if not math.isnan(r["z"])]
                cells.append(_cell(max(zs, key=abs), 3) if zs else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _estimators_summary(estimator_rows: list[dict], s: TheorySettings) -> str:
    index = {(r["estimator"], r["generation"], r["statistic"]): r["simulated"] for r in estimator_rows}
    n = s.generations

    def part(e: str) -> str:
        return (f"{ESTIMATORS[e]}: mean σ²_{n} {index[(e, n, 'mean σ²')]:.3g} "
                f"(closed form {float(expected_variance(s.samples, n, estimator=e)):.3g}), median "
                f"{index[(e, n, 'median σ²')]:.3g}, {index[(e, n, 'P(σ² < σ²_0)')]:.0%} of chains below σ²_0, "
                f"mean W2 {index[(e, n, 'mean W2')]:.3g}")

    return (f"At generation {n}, N = {s.samples}: {part('mle')}; {part('unbiased')}. The unbiased refit keeps the "
            "mean but not the typical chain: E[ln σ²_n] = n (ψ((N-1)/2) + ln 2 - ln(N-1)) < 0, so the median and "
            "most quantiles fall towards 0 (σ²_n → 0 almost surely) while a thinning right tail carries the mean; "
            "the fitted mean wanders off as a random walk, and W2 to the truth grows without bound (E[W2²] ≈ n/N).")


def _write_tables(out: Path, rows: list[dict], estimator_rows: list[dict], s: TheorySettings) -> list[Path]:
    columns = ["case", "quantity", "simulated", "se", "theory", "z"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "theory.csv", buffer.getvalue())

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["estimator", "estimator_label", "generation", "statistic",
                                                "simulated", "se", "theory", "z"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "estimator_label": ESTIMATORS[r["estimator"]]} for r in estimator_rows)
    write_text_atomic(out / "gaussian_estimators.csv", buffer.getvalue())

    lines = [
        "# Closed-form cases of model collapse, simulated",
        "",
        f"{s.chains:,} Gaussian chains per case (N = {s.samples} samples per generation, {s.generations} generations); "
        f"{s.chains // 4:,} categorical chains (Zipf({s.zipf_exponent}) over {s.categories} categories, "
        f"N = {s.categorical_samples}, {s.categorical_generations} generations); seed {s.seed}.",
        "",
        "## The Gaussian with each variance estimator, side by side",
        "",
        f"Every generation draws N = {s.samples} samples from the previous fit N(μ_n-1, σ²_n-1) and refits μ (the "
        f"sample mean) and σ², dividing the sum of squared deviations by N ({ESTIMATORS['mle']}) or by N-1 "
        f"({ESTIMATORS['unbiased']}); σ²_0 = 1, μ_0 = 0. Columns: the value over chains, its closed form, and "
        "z = (simulated - closed form) / exact standard error (for quantiles: the fraction of chains below the "
        "exact quantile against q, the largest |z| of the four shown; |z| < 4 is agreement).",
        "",
    ]
    lines += _estimators_markdown(estimator_rows, s)
    lines += [
        "",
        "Closed forms, with d = N (MLE) or N-1 (unbiased): σ²_n/σ²_0 is a product of n independent χ²_{N-1}/d, so "
        "E[σ²_n] = ((N-1)/d)^n σ²_0 (MLE ((N-1)/N)^n, unbiased 1), E[σ⁴_n] = ((N-1)(N+1)/d²)^n σ⁴_0 (the exact "
        "standard errors), E[ln σ²_n] = ln σ²_0 + n (ψ((N-1)/2) + ln 2 - ln d) (ψ: digamma), "
        "E[W2²_n] = σ²_0 (Σ_{j<n} ((N-1)/d)^j / N + ((N-1)/d)^n - 2 b^n + 1) with b = √(2/d) Γ(N/2)/Γ((N-1)/2); "
        "medians, quantiles and P(σ²_n < σ²_0) by inverting the closed-form characteristic function of ln σ²_n "
        "(exact to quadrature error). W2_n = √((μ_n - μ_0)² + (σ_n - σ_0)²) between the generation-n fit and the "
        "original. The two estimators use independent seeds.",
        "",
        _estimators_summary(estimator_rows, s),
        "",
        "## Every closed form against its simulation",
        "",
        "`z` = (simulated - theory) / standard error (exact for the replace rows); |z| < 4 is agreement.",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" if c in ("case", "quantity") else "---:" for c in columns) + " |",
    ]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    lines += [
        "",
        "Theory: E[σ²_n] = ((N-1)/N)^n σ²_0 (replace, MLE ÷N) and σ²_0 (replace, unbiased ÷(N-1)); the exact "
        "(E σ², E μ²) recursion (keep a fraction of real samples, positive fixed point); 1 - (1 - w)^N (a category "
        "of weight w survives one generation); 1 - w (eventual loss, drift is a martingale); -2N w ln(w)/(1 - w) "
        "(Kimura-Ohta diffusion approximation of the generation of loss). Accumulating samples has no closed form "
        "here: the simulation shows it does not collapse.",
        "",
        "Figures: gaussian_estimators, gaussian_variance, gaussian_collapsed_chains, categorical_survival, "
        "yellow_blue (.png, .svg). Tables: theory.csv, gaussian_estimators.csv.",
    ]
    write_text_atomic(out / "theory.md", "\n".join(lines) + "\n")
    return [out / "theory.csv", out / "gaussian_estimators.csv", out / "theory.md"]
