"""The closed-form cases of model collapse, simulated with NumPy and checked against theory.

Two exactly solvable models explain why recursive training collapses (Shumailov et al. 2024):

* **Gaussian.** Each generation fits mean and variance by maximum likelihood to N samples drawn
  from the previous fit. The fitted variance shrinks in expectation, E[σ²_n] = ((N-1)/N)^n σ²_0,
  and almost surely goes to zero. Keeping a fraction r of real samples stops the decay: the
  expected variance and squared mean follow an exact linear recursion (``expected_variance_keep``)
  whose fixed point is positive. Accumulating all samples (Gerstgrasser et al. 2024) keeps it
  from collapsing too.
* **Categorical** (a mixture's component weights, or a Zipf-tailed vocabulary). Refitting weights
  from N samples is Wright-Fisher drift: a component of weight w survives the next generation's
  sample with probability 1 - (1 - w)^N, is eventually lost with probability 1 - w, and when it
  is lost that takes about -2N w ln(w) / (1 - w) generations (Kimura & Ohta's diffusion
  approximation). Rare components go first: the tails vanish.

Thousands of independent chains are simulated at once, seeded.

    run = simulate_gaussian(samples=20, generations=50, chains=10_000, seed=0)
    run.mean_variance()[5], expected_variance(20, 5)
    write_theory_report(Path("runs/theory"))     # what `make theory` does
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcollapse.atomic import write_text_atomic

# ---------------------------------------------------------------------------- Gaussian

@dataclass(frozen=True)
class GaussianRun:
    regime: str  # replace | keep-fraction | accumulate
    samples: int
    real_fraction: float
    variances: np.ndarray  # (generations + 1, chains); row 0 is the true distribution
    means: np.ndarray

    @property
    def generations(self) -> int:
        return self.variances.shape[0] - 1

    def mean_variance(self) -> np.ndarray:
        return self.variances.mean(axis=1)

    def standard_error(self) -> np.ndarray:
        return self.variances.std(axis=1, ddof=1) / math.sqrt(self.variances.shape[1])

    def fraction_below(self, threshold: float) -> np.ndarray:
        """Per generation, the fraction of chains whose fitted variance is below ``threshold``."""
        return (self.variances < threshold).mean(axis=1)


def expected_variance(samples: int, generation: int | np.ndarray, sigma2: float = 1.0):
    """E[σ²_n] = ((N-1)/N)^n σ²_0 when every generation refits only on its predecessor's samples."""
    return ((samples - 1) / samples) ** np.asarray(generation) * sigma2


def expected_variance_keep(samples: int, real: int, generations: int, sigma2: float = 1.0) -> np.ndarray:
    """E[σ²_n], n = 0..generations, when ``real`` of the N samples come from the true N(0, σ²_0).

    With k real and N-k synthetic samples from N(μ, v), the MLE variance has expectation
    ((1 - 1/N)(k σ²_0 + (N-k) v) + k(N-k)/N · μ²) / N, and the new mean has second moment
    ((N-k)/N)² μ² + (k σ²_0 + (N-k) v)/N². Both are linear in (E v, E μ²), so iterating them gives
    the exact expectation; for k > 0 the fixed point is positive.
    """
    n, k = samples, real
    v, m2 = sigma2, 0.0
    out = [v]
    for _ in range(generations):
        pooled = k * sigma2 + (n - k) * v
        v, m2 = ((1 - 1 / n) * pooled + k * (n - k) / n * m2) / n, ((n - k) / n) ** 2 * m2 + pooled / n**2
        out.append(v)
    return np.array(out)


def simulate_gaussian(samples: int, generations: int, chains: int, seed: int = 0, sigma2: float = 1.0,
                      regime: str = "replace", real_fraction: float = 0.0) -> GaussianRun:
    """Refit N(μ, σ²) by MLE, generation after generation, in ``chains`` independent chains.

    ``replace``: N samples from the last fit. ``keep-fraction``: round(r N) of them from the true
    distribution, the rest from the last fit. ``accumulate``: generation 1 fits N real samples;
    every later one adds N samples from the last fit and refits on everything so far.
    """
    if regime not in ("replace", "keep-fraction", "accumulate"):
        raise ValueError(f"unknown regime {regime!r}")
    if samples < 2:
        raise ValueError("samples must be at least 2")
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
            var = np.maximum(sum_x2 / total - mean**2, 0.0)
        else:
            synthetic = mean[:, None] + np.sqrt(var)[:, None] * rng.standard_normal((chains, samples - real))
            x = np.concatenate([sigma * rng.standard_normal((chains, real)), synthetic], axis=1) if real else synthetic
            mean, var = x.mean(axis=1), x.var(axis=1)  # MLE: ddof = 0
        means.append(mean.copy())
        variances.append(var.copy())
    return GaussianRun(regime, samples, real / samples, np.array(variances), np.array(means))


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


def write_theory_report(out: Path, settings: TheorySettings = TheorySettings()) -> list[Path]:
    """Simulate every case, write the figures (PNG + SVG) and the table (Markdown + CSV)."""
    from lmcollapse.plotting import PALETTE, new_figure, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings
    written: list[Path] = []
    gaussian = {regime: simulate_gaussian(s.samples, s.generations, s.chains, s.seed + i, regime=regime,
                                          real_fraction=s.real_fraction)
                for i, regime in enumerate(("replace", "keep-fraction", "accumulate"))}
    generations = np.arange(s.generations + 1)
    real = int(round(s.real_fraction * s.samples))
    theory_curves = {"replace": expected_variance(s.samples, generations),
                     "keep-fraction": expected_variance_keep(s.samples, real, s.generations)}

    fig, ax = new_figure(f"Gaussian refitted on N = {s.samples} samples per generation ({s.chains:,} chains)",
                         "generation", "fitted variance σ² (true σ² = 1)")
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
    for colour, (regime, run) in zip(PALETTE, gaussian.items()):
        ax.plot(generations, run.fraction_below(threshold), color=colour, label=labels[regime])
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
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

    rows = theory_table(gaussian, theory_curves, categorical, yellow_blue, s)
    written += _write_table(out, rows, s)
    return written


def theory_table(gaussian, theory_curves, categorical, yellow_blue, s: TheorySettings) -> list[dict]:
    rows = []
    for regime in ("replace", "keep-fraction"):
        run = gaussian[regime]
        for n in (1, 5, 20, s.generations):
            if n > s.generations:
                continue
            simulated, se, expected = run.mean_variance()[n], run.standard_error()[n], theory_curves[regime][n]
            rows.append({"case": f"gaussian {regime}", "quantity": f"E[σ²_{n}], N={s.samples}",
                         "simulated": simulated, "se": se, "theory": expected, "z": (simulated - expected) / se})
    rows.append({"case": "gaussian accumulate", "quantity": f"E[σ²_{s.generations}], N={s.samples}",
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


def _write_table(out: Path, rows: list[dict], s: TheorySettings) -> list[Path]:
    columns = ["case", "quantity", "simulated", "se", "theory", "z"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "theory.csv", buffer.getvalue())

    def cell(value) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = [
        "# Closed-form cases of model collapse, simulated",
        "",
        f"{s.chains:,} Gaussian chains (N = {s.samples} samples per generation, {s.generations} generations); "
        f"{s.chains // 4:,} categorical chains (Zipf({s.zipf_exponent}) over {s.categories} categories, "
        f"N = {s.categorical_samples}, {s.categorical_generations} generations); seed {s.seed}.",
        "`z` = (simulated - theory) / standard error; |z| < 4 is agreement.",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" if c in ("case", "quantity") else "---:" for c in columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    lines += [
        "",
        "Theory: E[σ²_n] = ((N-1)/N)^n σ²_0 (replace); the exact (E σ², E μ²) recursion (keep a fraction of real "
        "samples, positive fixed point); 1 - (1 - w)^N (a category of weight w survives one generation); 1 - w "
        "(eventual loss, drift is a martingale); -2N w ln(w)/(1 - w) (Kimura-Ohta diffusion approximation of the "
        "generation of loss). Accumulating samples has no closed form here: the simulation shows it does not collapse.",
        "",
        "Figures: gaussian_variance, gaussian_collapsed_chains, categorical_survival, yellow_blue (.png, .svg).",
    ]
    write_text_atomic(out / "theory.md", "\n".join(lines) + "\n")
    return [out / "theory.csv", out / "theory.md"]
