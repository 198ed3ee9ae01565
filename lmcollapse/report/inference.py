"""The statistics of a folder of seeded runs, as tables and sentences: per group, generation and
metric the mean with its 95% confidence interval; per group against the reference group the
difference of means with its 95% interval, the p-values (Welch's t-test, an exact permutation
test), the one that decides adjusted by Holm over every comparison of the generation's table, and
Hedges' g (statistics.py says how each is computed).

    found = infer(groups, ["ppl_blocks", "self_bleu_4"], reference="tiny")
    tables = inference_tables(found)               # md (the last generation), csv, tex, json (all)
    print("\\n".join(headline_sentences(found)))
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass

from lmcollapse.errors import LmcollapseError
from lmcollapse.metrics import REGISTRY
from lmcollapse.report.runs import Group
from lmcollapse.report.statistics import ALPHA, CONFIDENCE, SMALL_N, compare, holm, summarize
from lmcollapse.report.tables import latex_table, markdown_table


@dataclass(frozen=True)
class Interval:
    group: str
    generation: int
    metric: str
    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    generation: int
    metric: str
    group: str
    reference: str
    n: int
    n_reference: int
    difference: float
    low: float
    high: float
    p_welch: float
    p_permutation: float
    test: str
    p: float
    p_holm: float
    hedges_g: float

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < ALPHA


@dataclass(frozen=True)
class Inference:
    reference: str
    metrics: list[str]
    intervals: list[Interval]
    differences: list[Difference]

    @property
    def last_generation(self) -> int:
        return max((i.generation for i in self.intervals), default=0)


def _values(group: Group, generation: int, metric: str) -> list:
    return [row.get(metric) for record in group.runs for row in record.rows if row["generation"] == generation]


def check_reference(groups: list[Group], reference: str | None) -> None:
    """Refuse a ``reference`` that names none of ``groups`` (None: the first group, always there)."""
    labels = [g.label for g in groups]
    if reference is not None and reference not in labels:
        raise LmcollapseError(f"reference {reference!r} has no complete run in this report (its groups: {', '.join(labels)}): "
                              "build its runs first, or name one of them (report --reference, a study's reference:)")


def holm_count(found: Inference, generation: int) -> int:
    """Holm's m at ``generation``: the comparisons that have a p-value (a group with one value has none)."""
    return sum(not math.isnan(d.p) for d in found.differences if d.generation == generation)


def infer(groups: list[Group], metrics: list[str], reference: str | None = None) -> Inference:
    """Intervals for every group, and differences of every other group from ``reference`` (a
    group's label; default the first group), Holm-adjusted within each generation."""
    labels = [g.label for g in groups]
    reference = reference or labels[0]
    check_reference(groups, reference)
    base = groups[labels.index(reference)]
    generations = sorted({row["generation"] for g in groups for r in g.runs for row in r.rows})
    intervals, differences = [], []
    for generation in generations:
        raw = []
        for group in groups:
            for metric in metrics:
                summary = summarize(_values(group, generation, metric), CONFIDENCE)
                if summary.n:
                    intervals.append(Interval(group.label, generation, metric, **asdict(summary)))
                if group is base or not summary.n or not _values(base, generation, metric):
                    continue
                raw.append((group.label, metric, compare(_values(group, generation, metric),
                                                         _values(base, generation, metric))))
        adjusted = holm([c.p for _, _, c in raw])
        for (label, metric, c), p_holm in zip(raw, adjusted):
            differences.append(Difference(generation, metric, label, reference, c.n, c.n_reference, c.difference,
                                          c.low, c.high, c.p_welch, c.p_permutation, c.test, c.p, p_holm, c.hedges_g))
    return Inference(reference, list(metrics), intervals, differences)


def _number(value: float, metric: str) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{REGISTRY[metric].decimals}f}"


def _p(value: float) -> str:
    return "-" if math.isnan(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def inference_tables(found: Inference) -> dict:
    """The last generation's differences as Markdown and LaTeX; every interval and difference of
    every generation in CSV and JSON."""
    generation = found.last_generation
    header = ["metric", "variant", "n", f"mean [{CONFIDENCE:.0%} CI]", f"vs {found.reference}: difference [95% CI]",
              "p (Welch)", "p (permutation)", "p, Holm", "Hedges' g", "significant"]
    means = {(i.group, i.metric): i for i in found.intervals if i.generation == generation}
    rows = []
    for d in (d for d in found.differences if d.generation == generation):
        mean = means[(d.group, d.metric)]
        rows.append([f"{d.metric} {REGISTRY[d.metric].arrow}".strip(), d.group, str(d.n),
                     f"{_number(mean.mean, d.metric)} [{_number(mean.low, d.metric)}, {_number(mean.high, d.metric)}]",
                     f"{_number(d.difference, d.metric)} [{_number(d.low, d.metric)}, {_number(d.high, d.metric)}]",
                     _p(d.p_welch), _p(d.p_permutation), f"{_p(d.p_holm)} ({d.test})",
                     "-" if math.isnan(d.hedges_g) else f"{d.hedges_g:.2f}", "yes" if d.significant else "no"])
    align = ["l", "l", "r", "r", "r", "r", "r", "r", "r", "l"]
    tested = holm_count(found, generation)
    caption = (f"generation {generation}: each variant against {found.reference}; p adjusted by Holm over the "
               f"{tested} comparisons of this table that have a p-value")
    buffer = io.StringIO()
    fields = [f.name for f in Difference.__dataclass_fields__.values()] + ["significant"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for d in found.differences:
        writer.writerow({**asdict(d), "significant": d.significant})
    interval_buffer = io.StringIO()
    interval_writer = csv.DictWriter(interval_buffer, fieldnames=list(Interval.__dataclass_fields__), lineterminator="\n")
    interval_writer.writeheader()
    for interval in found.intervals:
        interval_writer.writerow(asdict(interval))
    return {"md": markdown_table(header, rows, align), "tex": latex_table(header, rows, align, caption),
            "csv": buffer.getvalue(), "intervals_csv": interval_buffer.getvalue(),
            "json": {"reference": found.reference, "confidence": CONFIDENCE, "alpha": ALPHA,
                     "permutation_test_below_n": SMALL_N, "metrics": found.metrics,
                     "intervals": [asdict(i) for i in found.intervals],
                     "differences": [{**asdict(d), "significant": d.significant} for d in found.differences]},
            "caption": caption}


def headline_sentences(found: Inference, generation: int | None = None) -> list[str]:
    """One sentence per comparison at ``generation`` (default the last): which way, by how much,
    with its interval and adjusted p-value, and whether it is significant at 0.05."""
    generation = found.last_generation if generation is None else generation
    sentences = []
    for d in (d for d in found.differences if d.generation == generation):
        column = REGISTRY[d.metric]
        direction = "higher" if d.difference > 0 else "lower" if d.difference < 0 else "no different"
        better = "" if column.higher_is_better is None or d.difference == 0 else \
            (" (better)" if (d.difference > 0) == column.higher_is_better else " (worse)")
        verdict = "significant" if d.significant else "not significant"
        sentences.append(
            f"At generation {generation}, {d.group}'s {d.metric} is {direction}{better} than {d.reference}'s by "
            f"{_number(abs(d.difference), d.metric)} (95% CI {_number(d.low, d.metric)} to {_number(d.high, d.metric)}; "
            f"n = {d.n} and {d.n_reference} seeds): {verdict} at 0.05 after Holm's adjustment "
            f"(p = {_p(d.p_holm)} by the {d.test} test; Hedges' g {'-' if math.isnan(d.hedges_g) else f'{d.hedges_g:.2f}'}).")
    comparisons = holm_count(found, generation)
    out_of_reach = sorted({(d.n, d.n_reference) for d in found.differences if d.generation == generation
                           and d.test == "permutation" and d.n and d.n_reference
                           and smallest_permutation_p(d.n, d.n_reference) * comparisons >= ALPHA})
    for n, n_reference in out_of_reach:
        sentences.append(
            f"With {n} seeds against {n_reference}, no difference can be significant here whatever its size: the exact "
            f"permutation test's smallest p-value is {smallest_permutation_p(n, n_reference):.3f} before Holm's "
            f"adjustment over {comparisons} comparisons; Welch's p-values beside it assume normally distributed "
            f"seeds. Run at least {SMALL_N} seeds per variant (the t-test then decides) for a verdict.")
    return sentences


def smallest_permutation_p(n: int, n_reference: int) -> float:
    """The smallest two-sided p-value an exact permutation test of ``n`` against ``n_reference``
    values can give: the two most extreme of the C(n + n_reference, n) relabellings."""
    return min(1.0, 2 / math.comb(n + n_reference, n))
