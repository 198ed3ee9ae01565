"""The Gaussian case: each generation refits mean and variance to N samples of the previous fit.

Closed forms (moments, distribution, Wasserstein-2, the keep-a-fraction recursion) and the
simulation they are checked against; the derivations are in the package's docstring.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

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
