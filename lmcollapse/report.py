"""Publishable results: tables and figures for one run or a folder of runs.

    write_report(Path("runs/tiny"))              # -> runs/tiny/report/
    write_report(Path("runs/compare"))           # every run below, seeds aggregated, regimes side by side

Runs that agree on every result-affecting setting except the seed form one *group* (a regime);
its numbers are the mean ± standard deviation (ddof = 1) over seeds, with the number of seeds.
Two runs of one group with the same seed (a copied run folder, the same pipeline built twice) are
one computation, not two seeds: only one is counted (the one with more complete generations, else
the first found), and a warning, logged and written in ``index.md``, names the folder left out.
Written to ``<root>/report/``:

    metrics.md .csv .tex .json   one row per (group, generation), a column per metric
    comparison.md .csv .tex      the headline metrics of every group side by side (two or more groups)
    perplexity, diversity, tails, training_loss   figures (.png and .svg)
    index.md                     the one-page report: tables, figures, definitions, settings,
                                 versions and timings
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmcollapse.atomic import read_json, write_json_atomic, write_text_atomic
from lmcollapse.config import OPERATIONAL_KEYS, PipelineConfig, config_to_dict, config_to_yaml, flatten, load_config
from lmcollapse.errors import LmcollapseError
from lmcollapse.metrics import REGISTRY
from lmcollapse.records import concatenate, read_records
from lmcollapse.rundir import MANIFEST, RunDir, build_command, read_manifest

HEADLINE = ["ppl_blocks", "ppl_sliding", "self_bleu_4", "distinct_2", "tail_ppl_p50", "rare_survival"]
COMPARED = ["ppl_blocks", "self_bleu_4", "distinct_2", "rare_survival"]
MAX_DEPTH = 3

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    run: RunDir
    config: PipelineConfig
    rows: list[dict]
    reference: dict

    @property
    def generations(self) -> list[int]:
        return [row["generation"] for row in self.rows]


@dataclass
class Group:
    """Runs that differ only in their seed."""

    label: str
    runs: list[RunRecord] = field(default_factory=list)
    left_out: list[tuple[RunRecord, RunRecord]] = field(default_factory=list)
    """(left out, kept): runs with the same config and seed as a counted one."""

    @property
    def config(self) -> PipelineConfig:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int]:
        return sorted(r.config.seed for r in self.runs)


# ---------------------------------------------------------------------------- finding runs

def discover_runs(root: Path) -> list[RunRecord]:
    """The run at ``root``, or every run below it (a folder of seeds, regimes, ...)."""
    root = Path(root)
    if not root.exists():
        raise LmcollapseError(f"{root} does not exist: pass RUN= a run directory or a folder of runs")
    if not root.is_dir():
        raise LmcollapseError(f"RUN={root} is a file, not a run folder: pass RUN= a run directory or a folder of runs")
    found = [root] if (root / "pipeline.yaml").is_file() else _runs_below(root, MAX_DEPTH)
    records = [_record(RunDir(path)) for path in found]
    records = [r for r in records if r.rows]
    if not records:
        first = (build_command(found[0], 0) if found
                 else f"make generation-0 PIPELINE=pipelines/tiny.yaml RUN={shlex.quote(str(root))}")
        raise LmcollapseError(f"no complete generation under {root}: build one first, e.g. {first}")
    return records


def _runs_below(folder: Path, depth: int) -> list[Path]:
    if depth == 0:
        return []
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / "pipeline.yaml").is_file():
            found.append(child)
        elif child.name != "report":
            found.extend(_runs_below(child, depth - 1))
    return found


def _record(run: RunDir) -> RunRecord:
    from lmcollapse.integrity import DAMAGED, verify_run
    from lmcollapse.pipeline import collect_rows, reference_rows

    # Everything a report reads (manifests, training logs, tails) is checked against its manifest
    # first; stale generations are left out of the rows by collect_rows.
    damaged = [check for check in verify_run(run) if check.state == DAMAGED]
    if damaged:
        raise LmcollapseError(damaged[0].problem)
    return RunRecord(run, load_config(run.pipeline_file), collect_rows(run), reference_rows(run))


def group_runs(records: list[RunRecord]) -> list[Group]:
    """Runs grouped by every result-affecting setting but the seed (the config fingerprint less
    the seed); a run with the same seed as one already in its group is left out of it, once."""
    groups: dict[str, Group] = {}
    for record in records:
        settings = {k: v for k, v in flatten(config_to_dict(record.config)).items()
                    if k not in OPERATIONAL_KEYS and k != "seed"}
        key = json.dumps(settings, sort_keys=True, default=str)
        group = groups.setdefault(key, Group(record.config.name))
        twin = next((r for r in group.runs if r.config.seed == record.config.seed), None)
        if twin is None:
            group.runs.append(record)
        elif len(record.rows) > len(twin.rows):  # keep the more complete one
            group.runs[group.runs.index(twin)] = record
            group.left_out.append((twin, record))
        else:
            group.left_out.append((record, twin))
    labelled = list(groups.values())
    names = [g.label for g in labelled]
    for group in labelled:
        if names.count(group.label) > 1:  # same pipeline name, other settings: name the runs
            group.label = f"{group.label} ({', '.join(r.run.name for r in group.runs)})"
        group.runs.sort(key=lambda r: r.config.seed)
    for warning in duplicate_warnings(labelled):
        log.warning("%s", warning)
    return labelled


def duplicate_warnings(groups: list[Group]) -> list[str]:
    """One line per run left out of its group for repeating another run's config and seed."""
    return [f"{dropped.run.root} and {kept.run.root} are the same config and seed (seed {kept.config.seed}, "
            f"config fingerprint {kept.config.fingerprint()[:12]}): counted once, {dropped.run.root} left out of "
            "the mean ± std; delete or move one of them, or rerun it with another seed"
            for group in groups for dropped, kept in group.left_out]


# ---------------------------------------------------------------------------- aggregation

def aggregate(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof = 1; 0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return mean, std, len(finite)


def group_table(group: Group, metrics: list[str]) -> list[dict]:
    """Per generation: {"generation", "seeds", metric: (mean, std, n)} over the group's seeds."""
    generations = sorted({g for record in group.runs for g in record.generations})
    table = []
    for generation in generations:
        rows = [row for record in group.runs for row in record.rows if row["generation"] == generation]
        entry: dict = {"generation": generation, "seeds": len(rows)}
        for metric in metrics:
            entry[metric] = aggregate([row.get(metric) for row in rows])
        table.append(entry)
    return table


def present_metrics(groups: list[Group]) -> list[str]:
    present = {k for g in groups for r in g.runs for row in r.rows for k in row}
    return [m for m in REGISTRY if m in present]


# ---------------------------------------------------------------------------- formatting

def arrow(metric: str) -> str:
    better = REGISTRY[metric].higher_is_better
    return "↑" if better is True else "↓" if better is False else ""


def cell(value: tuple[float, float, int], metric: str) -> str:
    mean, std, n = value
    if n == 0:
        return "-"
    decimals = REGISTRY[metric].decimals
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if n > 1 else f"{mean:.{decimals}f}"


def definitions(metrics: list[str]) -> list[str]:
    lines = ["↑: higher is better; ↓: lower is better; no arrow: a description, not a score. "
             "Values are mean ± standard deviation over seeds (ddof = 1) where a group has several."]
    lines += [f"- `{m}` {arrow(m)}: {REGISTRY[m].definition} ({REGISTRY[m].aggregation})" for m in metrics]
    return lines


def markdown_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(header: list[str], rows: list[list[str]], align: list[str], caption: str) -> str:
    def tex(text: str) -> str:
        return latex_escape(text).replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
    lines = [
        f"% {caption}",
        "% Needs \\usepackage{booktabs}.",
        "\\begin{tabular}{" + "".join(align) + "}",
        "\\toprule",
        " & ".join(tex(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(tex(c) for c in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the tables

def metrics_tables(groups: list[Group], metrics: list[str]) -> dict[str, str | dict]:
    header = ["pipeline", "generation", "seeds"] + [f"{m} {arrow(m)}".strip() for m in metrics]
    align = ["l", "r", "r"] + ["r"] * len(metrics)
    text_rows, csv_rows, json_groups = [], [], []
    for group in groups:
        table = group_table(group, metrics)
        json_groups.append({"pipeline": group.label, "seeds": group.seeds,
                            "runs": [str(r.run.root) for r in group.runs],
                            "left_out": [{"run": str(dropped.run.root), "same_config_and_seed_as": str(kept.run.root)}
                                         for dropped, kept in group.left_out],
                            "generations": [{"generation": e["generation"], "seeds": e["seeds"],
                                             **{m: {"mean": e[m][0], "std": e[m][1], "n": e[m][2]} for m in metrics}}
                                            for e in table]})
        for entry in table:
            text_rows.append([group.label, str(entry["generation"]), str(entry["seeds"])]
                             + [cell(entry[m], m) for m in metrics])
            csv_rows.append({"pipeline": group.label, "generation": entry["generation"], "seeds": entry["seeds"],
                             **{f"{m}_{part}": value for m in metrics
                                for part, value in zip(("mean", "std"), entry[m][:2])}})
    buffer = io.StringIO()
    fields = ["pipeline", "generation", "seeds"] + [f"{m}_{p}" for m in metrics for p in ("mean", "std")]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else repr(v) if isinstance(v, float) else v)
                         for k, v in row.items()})
    return {
        "md": markdown_table(header, text_rows, align),
        "tex": latex_table(header, text_rows, align, "lmcollapse metrics: one row per pipeline and generation"),
        "csv": buffer.getvalue(),
        "json": {"metrics": metrics, "definitions": {m: {"definition": REGISTRY[m].definition,
                                                           "higher_is_better": REGISTRY[m].higher_is_better,
                                                           "aggregation": REGISTRY[m].aggregation} for m in metrics},
                 "groups": json_groups},
    }


def comparison_tables(groups: list[Group], metrics: list[str]) -> dict[str, str]:
    """Generations as rows, (metric, group) as columns: regimes side by side."""
    compared = [m for m in COMPARED if m in metrics]
    tables = {g.label: {e["generation"]: e for e in group_table(g, compared)} for g in groups}
    generations = sorted({gen for t in tables.values() for gen in t})
    header = ["generation"] + [f"{m} {arrow(m)} {g.label}".replace("  ", " ") for m in compared for g in groups]
    align = ["r"] + ["r"] * (len(header) - 1)
    rows = [[str(gen)] + [cell(tables[g.label][gen][m], m) if gen in tables[g.label] else "-"
                          for m in compared for g in groups] for gen in generations]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["generation"] + [f"{m}_mean[{g.label}]" for m in compared for g in groups]
                    + [f"{m}_std[{g.label}]" for m in compared for g in groups])
    for gen in generations:
        means = [tables[g.label][gen][m][0] if gen in tables[g.label] else "" for m in compared for g in groups]
        stds = [tables[g.label][gen][m][1] if gen in tables[g.label] else "" for m in compared for g in groups]
        writer.writerow([gen] + means + stds)
    return {"md": markdown_table(header, rows, align),
            "tex": latex_table(header, rows, align, "lmcollapse: regimes side by side"),
            "csv": buffer.getvalue()}


# ---------------------------------------------------------------------------- the figures

def figure_perplexity(groups: list[Group], out: Path) -> list[Path]:
    from lmcollapse.plotting import PALETTE, new_figure, save_figure

    fig, axes = new_figure("Held-out human perplexity by generation", "generation", "perplexity", ncols=2, width=11)
    for ax, metric, title in ((axes[0], "ppl_blocks", "non-overlapping blocks"), (axes[1], "ppl_sliding", "sliding window")):
        for colour, group in zip(PALETTE, groups):
            _mean_band(ax, group, metric, colour)
        base = [r.reference.get("base", {}).get(metric) for g in groups for r in g.runs[:1]]
        if base and base[0] is not None and len({round(b, 6) for b in base if b is not None}) == 1:
            ax.axhline(base[0], color="grey", linestyle="--", linewidth=1, label="base model, zero-shot")
        ax.set_title(f"{metric} ({title}) ↓")
        ax.set_yscale("log")
        ax.legend()
    return save_figure(fig, out / "perplexity")


def figure_diversity(groups: list[Group], out: Path) -> list[Path]:
    from lmcollapse.plotting import PALETTE, new_figure, save_figure

    fig, axes = new_figure("Diversity of each generation's synthetic corpus", "generation", "", ncols=2, width=11)
    for ax, metric in ((axes[0], "self_bleu_4"), (axes[1], "distinct_2")):
        for colour, group in zip(PALETTE, groups):
            _mean_band(ax, group, metric, colour)
        human = groups[0].runs[0].reference.get("human", {}).get(metric)
        if human is not None:
            ax.axhline(human, color="grey", linestyle="--", linewidth=1, label="human training blocks")
        ax.set_title(f"{metric} {arrow(metric)}")
        ax.set_ylabel(metric.replace("_", "-"))
        ax.legend()
    return save_figure(fig, out / "diversity")


def figure_tails(groups: list[Group], out: Path) -> list[Path]:
    """The paper's tail figure: per-sample perplexity under the generation-0 model, per generation."""
    from matplotlib import colormaps

    from lmcollapse.plotting import new_figure, save_figure

    shown = groups[:4]
    fig, axes = new_figure("Synthetic samples scored by the generation-0 model (first seed)",
                           "per-sample perplexity (log scale)", "density", ncols=len(shown), width=5.5 * len(shown))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, group in zip(axes, shown):
        run = group.runs[0]
        values = {g: np.load(run.run.generation(g).tails_values) for g in run.generations
                  if (run.run.generation(g).tails_values).is_file()}
        finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values.values()]) if values else np.array([])
        if len(finite) == 0:
            continue
        bins = np.logspace(np.log10(finite.min()), np.log10(finite.max()), 30)
        cmap = colormaps["viridis"]
        for i, (generation, v) in enumerate(sorted(values.items())):
            v = v[np.isfinite(v) & (v > 0)]
            density, edges = np.histogram(v, bins=bins, density=True)
            ax.step(edges[:-1], density, where="post", color=cmap(i / max(len(values) - 1, 1)),
                    label=f"generation {generation}")
        ax.set_xscale("log")
        ax.set_title(group.label)
        ax.legend()
    return save_figure(fig, out / "tails")


def figure_training_loss(groups: list[Group], out: Path) -> list[Path]:
    from matplotlib import colormaps

    from lmcollapse.plotting import new_figure, save_figure

    shown = groups[:4]
    fig, axes = new_figure("Training loss of each generation (first seed)", "optimizer step",
                           "training loss (token NLL, nats)", ncols=len(shown), width=5.5 * len(shown))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, group in zip(axes, shown):
        run = group.runs[0]
        cmap = colormaps["viridis"]
        for i, generation in enumerate(run.generations):
            path = run.run.generation(generation).train_log
            if not path.is_file():
                continue
            log = read_json(path)["log"]
            ax.plot([h["step"] for h in log], [h["loss"] for h in log], linewidth=1,
                    color=cmap(i / max(len(run.generations) - 1, 1)), label=f"generation {generation}")
        ax.set_title(group.label)
        ax.legend()
    return save_figure(fig, out / "training_loss")


def _mean_band(ax, group: Group, metric: str, colour: str) -> None:
    table = group_table(group, [metric])
    x = [e["generation"] for e in table]
    mean = np.array([e[metric][0] for e in table])
    std = np.array([e[metric][1] for e in table])
    seeds = max(e[metric][2] for e in table) if table else 0
    ax.plot(x, mean, marker="o", markersize=3, color=colour,
            label=f"{group.label} ({seeds} seed{'s' if seeds != 1 else ''})")
    if seeds > 1:
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    ax.set_xticks(x)


# ---------------------------------------------------------------------------- the report

def write_report(root: Path, out: Path | None = None) -> Path:
    """Write every table, figure and ``index.md`` for the run or folder of runs at ``root``."""
    root = Path(root)
    groups = group_runs(discover_runs(root))
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = present_metrics(groups)
    tables = metrics_tables(groups, metrics)
    for suffix in ("md", "tex", "csv"):
        write_text_atomic(out / f"metrics.{suffix}", tables[suffix] + ("\n" if suffix == "md" else ""))
    write_json_atomic(out / "metrics.json", tables["json"])
    comparison = None
    if len(groups) > 1:
        comparison = comparison_tables(groups, metrics)
        for suffix in ("md", "tex", "csv"):
            write_text_atomic(out / f"comparison.{suffix}", comparison[suffix] + ("\n" if suffix == "md" else ""))
    figures = []
    for draw in (figure_perplexity, figure_diversity, figure_tails, figure_training_loss):
        figures.extend(draw(groups, out))
    write_text_atomic(out / "index.md", index_page(root, groups, metrics, comparison, figures))
    return out


SAMPLES_PER_GENERATION = 3


def markdown_text(text: str, limit: int = 400) -> str:
    """Corpus text shown verbatim in Markdown: one line, characters Markdown would act on escaped."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return "".join(f"\\{c}" if c in "\\`*_[]<>|~" else c for c in text)


def sample_continuations(groups: list[Group]) -> list[str]:
    """A few continuations of every generation (the same positions in each corpus), after the
    end of the block they continue: whether the text degenerates is seen, not only measured."""
    lines = ["## Sample continuations", "",
             f"The records at the same {SAMPLES_PER_GENERATION} positions of every generation's synthetic corpus "
             "(first seed of each pipeline): the last words of the block it continued, then → its new text.", ""]
    for group in groups:
        record = min(group.runs, key=lambda r: r.config.seed)
        lines += [f"### {group.label} (seed {record.config.seed})", ""]
        for index in record.generations:
            generation = record.run.generation(index)
            shards = generation.synthetic_shards()
            if not shards:
                continue
            synthetic = concatenate([read_records(path) for path in shards])
            continued = {}
            for source in (generation.train_set, record.run.human_train):
                if source.is_file():
                    table = read_records(source)
                    continued.update(zip(table["id"], table["text"]))
            count = len(synthetic)
            positions = sorted({round(k * (count - 1) / max(SAMPLES_PER_GENERATION - 1, 1))
                                for k in range(min(SAMPLES_PER_GENERATION, count))})
            lines += [f"**Generation {index}**", ""]
            for position in positions:
                prompt = " ".join(continued.get(synthetic["parent"][position], "").split()[-12:])
                lines += [f"- `{synthetic['id'][position]}`: … {markdown_text(prompt, 120)} → "
                          f"**{markdown_text(synthetic['text'][position])}**"]
            lines += [""]
    return lines


def index_page(root: Path, groups: list[Group], metrics: list[str], comparison, figures: list[Path]) -> str:
    from lmcollapse import __version__

    headline = [m for m in HEADLINE if m in metrics]
    lines = [f"# lmcollapse report: {root}", "",
             f"Written {datetime.date.today().isoformat()} by lmcollapse {__version__}. "
             "Tables: [metrics.md](metrics.md) ([csv](metrics.csv), [tex](metrics.tex), [json](metrics.json))"
             + (", [comparison.md](comparison.md)" if comparison else "") + ".", ""]
    warnings = duplicate_warnings(groups)
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    lines += ["## Runs", "",
              markdown_table(["pipeline", "seeds", "generations", "run directories"],
                             [[g.label, ", ".join(map(str, g.seeds)),
                               ", ".join(sorted({str(x) for r in g.runs for x in r.generations}, key=int)),
                               ", ".join(f"`{r.run.root}`" for r in g.runs)] for g in groups],
                             ["l", "l", "l", "l"]), ""]
    headline_tables = metrics_tables(groups, headline)
    lines += ["## Results", "", headline_tables["md"], "",
              f"All metrics ({len(metrics)} columns) are in [metrics.md](metrics.md).", ""]
    if comparison:
        lines += ["## Regimes side by side", "", comparison["md"], ""]
    lines += ["## Figures", ""]
    captions = {
        "perplexity": "Held-out human perplexity of each generation, by both methods (mean and ±1 std band over seeds).",
        "diversity": "Self-BLEU-4 (lower is more diverse) and distinct-2 of each generation's synthetic corpus; "
                     "dashed: the human training blocks.",
        "tails": "Per-sample perplexity of each generation's synthetic corpus under the generation-0 model "
                 "(the paper's tail histograms).",
        "training_loss": "Training loss per optimizer step, one curve per generation.",
    }
    for path in figures:
        if path.suffix == ".png":
            lines += [f"![{path.stem}]({path.name})", "", f"*{captions.get(path.stem, path.stem)}* "
                      f"([svg]({path.with_suffix('.svg').name}))", ""]
    lines += sample_continuations(groups)
    lines += ["## Metric definitions", ""] + definitions(metrics) + [""]
    lines += ["## Settings", ""]
    for group in groups:
        lines += [f"### {group.label}", "", group.config.description or "", "",
                  "```yaml", config_to_yaml(group.config).rstrip(), "```", ""]
    lines += ["## Environment and timings", ""]
    env_rows, timing_rows = [], []
    for group in groups:
        for record in group.runs:
            manifest = read_manifest(record.run.generation(record.generations[-1]).manifest)
            versions = manifest.get("versions", {})
            env_rows.append([group.label, str(record.config.seed), manifest.get("git_commit") or "-",
                             manifest.get("device", "-"),
                             ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("torch", "transformers", "datasets", "accelerate"))])
            seconds = {k: aggregate([row.get(k) for row in record.rows])[0]
                       for k in ("train_seconds", "generate_seconds", "eval_seconds")}
            timing_rows.append([group.label, str(record.config.seed), str(len(record.rows))]
                               + [f"{seconds[k]:.1f}" for k in ("train_seconds", "generate_seconds", "eval_seconds")]
                               + [f"{sum(row.get('train_seconds', 0) + row.get('generate_seconds', 0) + row.get('eval_seconds', 0) for row in record.rows) / 60:.1f}"])
    lines += [markdown_table(["pipeline", "seed", "git commit", "device", "versions"], env_rows, ["l"] * 5), "",
              markdown_table(["pipeline", "seed", "generations", "train s/gen", "generate s/gen", "eval s/gen", "total min"],
                             timing_rows, ["l", "r", "r", "r", "r", "r", "r"]), ""]
    if (groups[0].runs[0].run.human / MANIFEST).is_file():
        human = read_manifest(groups[0].runs[0].run.human / MANIFEST)
        lines += [f"Human data: {human['train']['blocks']} training blocks from {human['train']['source']}; "
                  f"{human['heldout']['blocks']} held-out blocks from {human['heldout']['source']}.", ""]
    return "\n".join(lines)
