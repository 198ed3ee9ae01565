"""The report's figures: perplexity and diversity by generation (mean ± sd over seeds), the
tails histograms and the training-loss curves (first seed), as .png and .svg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmcollapse.metrics import REGISTRY
from lmcollapse.report.runs import Group, group_table, present_metrics
from lmcollapse.run.atomic import read_json


def figure_perplexity(groups: list[Group], out: Path) -> list[Path]:
    from lmcollapse.report.plotting import group_styles, new_figure, save_figure

    fig, axes = new_figure("Held-out human perplexity by generation", "generation", "perplexity", ncols=2, width=11)
    for ax, metric, title in ((axes[0], "ppl_blocks", "non-overlapping blocks"), (axes[1], "ppl_sliding", "sliding window")):
        for style, group in zip(group_styles(len(groups)), groups):
            _mean_band(ax, group, metric, *style)
        base = [r.reference.get("base", {}).get(metric) for g in groups for r in g.runs[:1]]
        if base and base[0] is not None and len({round(b, 6) for b in base if b is not None}) == 1:
            ax.axhline(base[0], color="grey", linestyle="--", linewidth=1, label="base model, zero-shot")
        ax.set_title(f"{metric} ({title}) ↓")
        ax.set_yscale("log")
        ax.legend()
    return save_figure(fig, out / "perplexity")


def figure_diversity(groups: list[Group], out: Path) -> list[Path]:
    from lmcollapse.report.plotting import group_styles, new_figure, save_figure

    fig, axes = new_figure("Diversity of each generation's synthetic corpus", "generation", "", ncols=2, width=11)
    for ax, metric in zip(axes, diversity_metrics(groups)):
        for style, group in zip(group_styles(len(groups)), groups):
            _mean_band(ax, group, metric, *style)
        human = groups[0].runs[0].reference.get("human", {}).get(metric)
        if human is not None:
            ax.axhline(human, color="grey", linestyle="--", linewidth=1, label="human training blocks")
        ax.set_title(f"{metric} {REGISTRY[metric].arrow}")
        ax.set_ylabel(metric.replace("_", "-"))
        ax.legend()
    return save_figure(fig, out / "diversity")


def diversity_metrics(groups: list[Group]) -> tuple[str, str]:
    """The self-BLEU and distinct-n columns the diversity figure shows: self-BLEU-4 and distinct-2,
    or where a pipeline computes other orders (evaluate.self_bleu_max_n, distinct_max_n) the
    highest it has of each."""
    present = set(present_metrics(groups))

    def chosen(prefix: str, preferred: str) -> str:
        if preferred in present:
            return preferred
        orders = sorted((int(m.removeprefix(prefix)), m) for m in present if m.removeprefix(prefix).isdigit()
                        and m.startswith(prefix))
        return orders[-1][1] if orders else preferred

    return chosen("self_bleu_", "self_bleu_4"), chosen("distinct_", "distinct_2")


def figure_tails(groups: list[Group], out: Path) -> list[Path]:
    """The paper's tail figure: per-sample perplexity under the generation-0 model, per generation."""
    from matplotlib import colormaps

    from lmcollapse.report.plotting import new_figure, save_figure

    shown = groups[:4]
    fig, axes = new_figure("Synthetic samples scored by the generation-0 model (first seed)",
                           "per-sample perplexity (log scale)", "fraction of samples", ncols=len(shown),
                           width=5.5 * len(shown))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, group in zip(axes, shown):
        record = group.runs[0]
        values = {g: np.load(record.run.generation(g).tails_values) for g in record.generations
                  if record.run.generation(g).tails_values.is_file()}
        finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values.values()]) if values else np.array([])
        if len(finite) == 0:
            continue
        bins = np.logspace(np.log10(finite.min()), np.log10(finite.max()), 30)
        cmap = colormaps["viridis"]
        for i, (generation, v) in enumerate(sorted(values.items())):
            v = v[np.isfinite(v) & (v > 0)]
            # the fraction of samples per bin: bins equal in log width, so on the log axis a bar's
            # height is its share (a density per unit of perplexity would shrink the upper tail by 1/x)
            counts, edges = np.histogram(v, bins=bins)
            ax.stairs(counts / max(counts.sum(), 1), edges, color=cmap(i / max(len(values) - 1, 1)),
                      label=f"generation {generation}")
        ax.set_xscale("log")
        ax.set_title(group.label)
        ax.legend()
    return save_figure(fig, out / "tails")


def figure_training_loss(groups: list[Group], out: Path) -> list[Path]:
    from matplotlib import colormaps

    from lmcollapse.report.plotting import new_figure, save_figure

    shown = groups[:4]
    fig, axes = new_figure("Training loss of each generation (first seed)", "optimizer step",
                           "training loss (token NLL, nats)", ncols=len(shown), width=5.5 * len(shown))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, group in zip(axes, shown):
        record = group.runs[0]
        cmap = colormaps["viridis"]
        for i, generation in enumerate(record.generations):
            path = record.run.generation(generation).train_log
            if not path.is_file():
                continue
            log = read_json(path)["log"]
            ax.plot([h["step"] for h in log], [h["loss"] for h in log], linewidth=1,
                    color=cmap(i / max(len(record.generations) - 1, 1)), label=f"generation {generation}")
        ax.set_title(group.label)
        ax.legend()
    return save_figure(fig, out / "training_loss")


def _mean_band(ax, group: Group, metric: str, colour: str, linestyle: str = "-") -> None:
    table = group_table(group, [metric])
    x = [e["generation"] for e in table]
    mean = np.array([e[metric][0] for e in table])
    std = np.array([e[metric][1] for e in table])
    seeds = max(e[metric][2] for e in table) if table else 0
    ax.plot(x, mean, marker="o", markersize=3, color=colour, linestyle=linestyle,
            label=f"{group.label} ({seeds} seed{'s' if seeds != 1 else ''})")
    if seeds > 1:
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    ax.set_xticks(x)


def figure_intervals(found, out: Path) -> list[Path]:
    """The compared metrics by generation: each group's mean over seeds and its 95% confidence band."""
    from lmcollapse.report.plotting import group_styles, new_figure, save_figure

    metrics = found.metrics
    fig, axes = new_figure(f"Mean over seeds with its 95% confidence interval (reference: {found.reference})",
                           "generation", "", ncols=len(metrics), width=4.2 * len(metrics) + 1.5)
    axes = axes if isinstance(axes, list) else [axes]
    groups = list(dict.fromkeys(i.group for i in found.intervals))
    for ax, metric in zip(axes, metrics):
        for (colour, linestyle), group in zip(group_styles(len(groups)), groups):
            points = sorted((i for i in found.intervals if i.group == group and i.metric == metric),
                            key=lambda i: i.generation)
            x = [i.generation for i in points]
            ax.plot(x, [i.mean for i in points], marker="o", markersize=3, color=colour, linestyle=linestyle, label=group)
            ax.fill_between(x, [i.low for i in points], [i.high for i in points], color=colour, alpha=0.2, linewidth=0)
            ax.set_xticks(x)
        ax.set_title(f"{metric} {REGISTRY[metric].arrow}".strip())
        ax.legend(fontsize=7)
    return save_figure(fig, out / "intervals")
