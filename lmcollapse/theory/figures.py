"""The figures of ``make theory``: each case simulated, with its closed form beside it.

    written = gaussian_estimators(out, settings, replace)      # -> [out/gaussian_estimators.png, .svg]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmcollapse.report.plotting import PALETTE, new_figure, save_figure
from lmcollapse.theory.categorical import expected_loss_generation
from lmcollapse.theory.gaussian import (
    ESTIMATORS,
    expected_variance,
    expected_wasserstein2_squared,
    variance_cdf,
    variance_quantile,
)

COLOURS = {"mle": PALETTE[0], "unbiased": PALETTE[1]}


def gaussian_estimators(out: Path, s, replace: dict) -> list[Path]:
    """The two estimators side by side: σ²_n (mean, median, spread) and W2 to the truth."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    generations = np.arange(s.generations + 1)
    fig, axes = new_figure(f"Gaussian refitted on its own N = {s.samples} samples, two variance estimators "
                           f"({s.chains:,} chains each)", "generation", "", ncols=2, width=12.5)
    for estimator, run in replace.items():
        colour = COLOURS[estimator]
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
    estimators = [Patch(color=COLOURS[e], label=ESTIMATORS[e]) for e in replace]
    grey = "#555555"
    fig.legend(handles=estimators + [
        Line2D([], [], color=grey, label="mean over chains"),
        Line2D([], [], color=grey, linestyle="--", linewidth=1, label="closed form: E[σ²_n] (left), √E[W2²_n] (right)"),
        Line2D([], [], color=grey, linestyle=":", label="median over chains"),
        Line2D([], [], color=grey, linestyle="none", marker="o", markerfacecolor="none", label="exact median of σ²_n"),
        Patch(color=grey, alpha=0.2, label="5th-95th percentile of chains")],
        loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False, fontsize=8)
    return save_figure(fig, out / "gaussian_estimators")


def gaussian_variance(out: Path, s, gaussian: dict, theory_curves: dict) -> list[Path]:
    generations = np.arange(s.generations + 1)
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
    return save_figure(fig, out / "gaussian_variance")


def collapsed_chains(out: Path, s, gaussian: dict, replace: dict, threshold: float = 0.1) -> list[Path]:
    generations = np.arange(s.generations + 1)
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
    return save_figure(fig, out / "gaussian_collapsed_chains")


def categorical_survival(out: Path, s, zipf: np.ndarray, categorical) -> list[Path]:
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
    return save_figure(fig, out / "categorical_survival")


def yellow_blue(out: Path, yellow_blue) -> list[Path]:
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
    return save_figure(fig, out / "yellow_blue")
