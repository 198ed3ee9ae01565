"""The report's pages: the metrics and comparison tables (Markdown, CSV, LaTeX, JSON) and the
one-page ``index.md`` with figures, definitions, sample continuations, settings and timings.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
from pathlib import Path

from lmcollapse.config import config_to_yaml
from lmcollapse.data.records import concatenate, read_records
from lmcollapse.metrics import REGISTRY
from lmcollapse.metrics.columns import COMPARED, HEADLINE, STAGE_SECONDS, shown_in
from lmcollapse.metrics.table import generation_label
from lmcollapse.report.figures import (
    figure_diversity,
    figure_intervals,
    figure_perplexity,
    figure_tails,
    figure_training_loss,
)
from lmcollapse.report.html import html_page
from lmcollapse.report.inference import Inference, check_reference, headline_sentences, infer, inference_tables
from lmcollapse.report.runs import (
    Group,
    aggregate,
    discover_runs,
    duplicate_warnings,
    group_runs,
    group_table,
    present_metrics,
)
from lmcollapse.report.statistics import SMALL_N
from lmcollapse.report.tables import latex_table, markdown_table
from lmcollapse.run.atomic import nan_as_null, write_json_atomic, write_text_atomic
from lmcollapse.run.manifests import read_manifest
from lmcollapse.stages.tracking import log_report_figures


def cell(value: tuple[float, float, int], metric: str) -> str:
    mean, std, n = value
    if n == 0:
        return "-"
    decimals = REGISTRY[metric].decimals
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if n > 1 else f"{mean:.{decimals}f}"


def definitions(metrics: list[str]) -> list[str]:
    lines = ["↑: higher is better; ↓: lower is better; no arrow: a description, not a score. "
             "Values are mean ± standard deviation over seeds (ddof = 1) where a group has several."]
    lines += [f"- `{m}` {REGISTRY[m].arrow}: {REGISTRY[m].definition} ({REGISTRY[m].aggregation})" for m in metrics]
    return lines


def metrics_tables(groups: list[Group], metrics: list[str]) -> dict[str, str | dict]:
    header = ["pipeline", "generation", "seeds"] + [f"{m} {REGISTRY[m].arrow}".strip() for m in metrics]
    align = ["l", "r", "r"] + ["r"] * len(metrics)
    text_rows, csv_rows, json_groups = [], [], []
    for group in groups:
        table = group_table(group, metrics)
        json_groups.append({"pipeline": group.label, "seeds": group.seeds,
                            "runs": [str(r.run.root) for r in group.runs],
                            "left_out": [{"run": str(dropped.run.root), "same_config_and_seed_as": str(kept.run.root)}
                                         for dropped, kept in group.left_out],
                            "generations": [{"generation": e["generation"], "seeds": e["seeds"],
                                             **({"family": e["family"]} if "family" in e else {}),
                                             **{m: {"mean": e[m][0], "std": e[m][1], "n": e[m][2]} for m in metrics}}
                                            for e in table]})
        for entry in table:
            text_rows.append([group.label, generation_label(entry), str(entry["seeds"])]
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
    compared = [m for m in shown_in(COMPARED) if m in metrics]
    tables = {g.label: {e["generation"]: e for e in group_table(g, compared)} for g in groups}
    generations = sorted({gen for t in tables.values() for gen in t})
    header = ["generation"] + [f"{m} {REGISTRY[m].arrow} {g.label}".replace("  ", " ") for m in compared for g in groups]
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


def write_report(root: Path, out: Path | None = None, reference: str | None = None,
                 compared: list[str] | None = None, title: str | None = None, only: list[Path] | None = None) -> Path:
    """Write every table, figure and ``index.md`` for the run or folder of runs at ``root``; where
    groups have several seeds, the statistics too (``reference``: the group the others are compared
    with, default the first; ``compared``: the metrics, default the comparison table's; ``only``: the
    runs below ``root`` to report, default all)."""
    root = Path(root)
    groups = group_runs(discover_runs(root, only))
    check_reference(groups, reference)
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = present_metrics(groups)
    tables = metrics_tables(groups, metrics)
    for suffix in ("md", "tex", "csv"):
        write_text_atomic(out / f"metrics.{suffix}", tables[suffix] + ("\n" if suffix == "md" else ""))
    write_json_atomic(out / "metrics.json", nan_as_null(tables["json"]))
    comparison = None
    if len(groups) > 1:
        comparison = comparison_tables(groups, metrics)
        for suffix in ("md", "tex", "csv"):
            write_text_atomic(out / f"comparison.{suffix}", comparison[suffix] + ("\n" if suffix == "md" else ""))
    figures = []
    for draw in (figure_perplexity, figure_diversity, figure_tails, figure_training_loss):
        figures.extend(draw(groups, out))
    found = None
    if any(len(g.runs) > 1 for g in groups):
        found = infer(groups, [m for m in (compared or shown_in(COMPARED)) if m in metrics], reference)
        statistics = inference_tables(found)
        write_text_atomic(out / "statistics.md", statistics["md"] + "\n")
        write_text_atomic(out / "statistics.tex", statistics["tex"])
        write_text_atomic(out / "statistics.csv", statistics["csv"])
        write_text_atomic(out / "intervals.csv", statistics["intervals_csv"])
        write_json_atomic(out / "statistics.json", nan_as_null(statistics["json"]))
        figures.extend(figure_intervals(found, out))
    page = index_page(root, groups, metrics, comparison, figures, found, title)
    write_text_atomic(out / "index.md", page)
    write_text_atomic(out / "index.html", html_page(page, out, f"lmcollapse report: {root}"))
    if len(groups) == 1 and len(groups[0].runs) == 1:  # one run: its trackers get its own report's figures
        record = groups[0].runs[0]
        if out.resolve() == record.run.report.resolve():
            log_report_figures(record.config, record.run, [f for f in figures if f.suffix == ".png"])
    return out


def statistics_section(found: Inference) -> list[str]:
    tables = inference_tables(found)
    lines = ["## Statistics", "",
             f"Each group's mean over seeds with its 95% confidence interval, and its difference from "
             f"**{found.reference}** with the difference's 95% interval (Welch). The p-value that decides is an exact "
             f"permutation test where a group has fewer than {SMALL_N} seeds, Welch's t-test otherwise; it is "
             "adjusted by Holm over every comparison of the table. Hedges' g: the difference in pooled standard "
             "deviations. All generations: [statistics.csv](statistics.csv), [intervals.csv](intervals.csv) "
             "([json](statistics.json), [tex](statistics.tex)).", "",
             f"*{tables['caption']}*", "", tables["md"], ""]
    sentences = headline_sentences(found)
    if sentences:
        lines += [f"- {sentence}" for sentence in sentences] + [""]
    return lines


SAMPLES_PER_GENERATION = 3


MARKDOWN_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "~": "&#126;"}


def markdown_text(text: str, limit: int = 400) -> str:
    """Corpus text shown verbatim in Markdown: one line; characters Markdown acts on escaped with a
    backslash, and <, >, ~ and & as HTML entities (a backslash before them is not an escape in
    every Markdown: Python-Markdown, which renders index.html, would show it)."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return "".join(MARKDOWN_ENTITIES.get(c, f"\\{c}" if c in "\\`*_[]|" else c) for c in text)


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
            # The blocks it continued: its own family's human blocks (model.chain), then its training set.
            family = record.run.family(record.config.model.family_position(index))
            for source in (family.human_train, generation.train_set):
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


def index_page(root: Path, groups: list[Group], metrics: list[str], comparison, figures: list[Path],
               found: Inference | None = None, title: str | None = None) -> str:
    from lmcollapse import __version__

    headline = [m for m in shown_in(HEADLINE) if m in metrics]
    lines = [f"# {title or f'lmcollapse report: {root}'}", "",
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
    if found is not None:
        lines += statistics_section(found)
    lines += ["## Figures", ""]
    captions = {
        "perplexity": "Held-out human perplexity of each generation, by both methods (mean and ±1 std band over seeds).",
        "diversity": "Self-BLEU (lower is more diverse) and distinct-n of each generation's synthetic corpus, the "
                     "orders in the panels' titles; dashed: the human training blocks.",
        "tails": "Per-sample perplexity of each generation's synthetic corpus under the generation-0 model "
                 "(the paper's tail histograms): the fraction of samples in each bin, bins of equal width on the "
                 "log axis.",
        "training_loss": "Training loss per optimizer step, one curve per generation.",
        "intervals": "The compared metrics by generation: each group's mean over seeds with its 95% confidence band.",
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
            seconds = {k: aggregate([row.get(k) for row in record.rows])[0] for k in STAGE_SECONDS}
            total = sum(row.get(k, 0) for row in record.rows for k in STAGE_SECONDS)
            timing_rows.append([group.label, str(record.config.seed), str(len(record.rows))]
                               + [f"{seconds[k]:.1f}" for k in STAGE_SECONDS] + [f"{total / 60:.1f}"])
    lines += [markdown_table(["pipeline", "seed", "git commit", "device", "versions"], env_rows, ["l"] * 5), "",
              markdown_table(["pipeline", "seed", "generations", "train s/gen", "generate s/gen", "eval s/gen", "total min"],
                             timing_rows, ["l", "r", "r", "r", "r", "r", "r"]), ""]
    if groups[0].runs[0].run.human_manifest.is_file():
        human = read_manifest(groups[0].runs[0].run.human_manifest)
        lines += [f"Human data: {human['train']['blocks']} training blocks from {human['train']['source']}; "
                  f"{human['heldout']['blocks']} held-out blocks from {human['heldout']['source']}.", ""]
    return "\n".join(lines)
