"""One figure style for every plot lmcollapse draws (LM reports and the closed-form cases).

Matplotlib with the Agg backend (no display needed), a colour-blind-safe palette, labelled axes
with units, and every figure saved as both PNG (slides) and SVG (papers).

    fig, ax = new_figure("Held-out perplexity", "generation", "perplexity (64-token blocks)")
    ax.plot(...)
    save_figure(fig, out / "perplexity")      # perplexity.png and perplexity.svg
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from lmcollapse.run.atomic import atomic_path  # noqa: E402

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

LINESTYLES = ["-", "--", ":", "-."]


def group_styles(count: int) -> list[tuple[str, str]]:
    """(colour, line style) for ``count`` groups: the palette's eight colours, then again with the
    next line style, so a ninth group is drawn (dashed), not dropped."""
    return [(PALETTE[i % len(PALETTE)], LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]) for i in range(count)]


STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 160,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "svg.hashsalt": "lmcollapse",  # stable SVG ids: the same figure gives the same file
}


def new_figure(title: str, xlabel: str, ylabel: str, ncols: int = 1, width: float | None = None):
    """A figure with ``ncols`` axes in the house style; returns (figure, axes or the first axes)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(width or 6.4 * ncols, 4.0), squeeze=False)
    for ax in axes[0]:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        _apply_style(ax)
    if ncols == 1:
        axes[0][0].set_title(title)
        return fig, axes[0][0]
    fig.suptitle(title, fontsize=12, y=1.03)
    return fig, list(axes[0])


def _apply_style(ax) -> None:
    ax.grid(True, alpha=STYLE["grid.alpha"])
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def save_figure(fig, stem: Path) -> list[Path]:
    """Save ``fig`` as ``stem``.png and ``stem``.svg, atomically; return both paths."""
    paths = []
    with plt.rc_context(STYLE):
        for suffix in (".png", ".svg"):
            path = Path(stem).with_suffix(suffix)
            with atomic_path(path) as scratch:
                fig.savefig(scratch, format=suffix[1:], metadata={"Date": None} if suffix == ".svg" else None)
            paths.append(path)
    plt.close(fig)
    return paths
