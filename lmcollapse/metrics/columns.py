"""The column catalogue: every column a run reports, defined once.

Each column of ``metrics.csv`` is registered here with its one-line definition (printed under
every table), whether higher is better, how per-item values become the reported number, its
decimals in published tables, which tables show it, where its value comes from, and whether it
varies between two runs of one config (wall times). The metrics row of a generation is built from
this catalogue (``metrics_row``: no column name is typed anywhere else), the terminal table and the
report's headline and comparison tables are views of it, and a test checks that every column a
run writes has an entry.

    COLUMNS["ppl_blocks"].definition
    shown_in(TERMINAL)                     # the columns `make run` prints, in order
    REGISTRY                               # the measured metrics only (no identity or run facts)
    reproducible(row)                      # the row without the columns that vary between identical runs
    distinct_column(2, "li")               # "distinct_2_li": every templated name comes from here
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmcollapse.config.stage_sections import DETECTORS, MAX_NGRAM_ORDER
from lmcollapse.data.records import HUMAN

TAIL_QUANTILES = (1, 5, 50, 95, 99)
ORDERS = range(1, MAX_NGRAM_ORDER + 1)  # n-gram orders with columns of their own

# The tables a column can be shown in, besides metrics.csv / metrics.json (which hold every column).
TERMINAL = "terminal"  # the table `make run` prints after each generation
HEADLINE = "headline"  # the report's per-generation tables (mean ± sd over seeds)
COMPARED = "compared"  # the report's comparison of pipelines at the last generation


ABSENT = object()  # a column's value for a generation that has none (no selection, no decontamination)


def self_bleu_column(n: int) -> str:
    return f"self_bleu_{n}"


def distinct_column(n: int, variant: str = "") -> str:
    """``distinct_{n}`` (corpus level), ``distinct_{n}_li`` (Li et al.) or ``distinct_{n}_per_sample``."""
    return f"distinct_{n}" + (f"_{variant}" if variant else "")


def tail_column(q: int) -> str:
    return f"tail_ppl_p{q}"


def result(name: str) -> Callable[[str], Callable]:
    """Values read from the generation's evaluation result ``name`` (perplexity, text_metrics, tails)."""
    return lambda column: lambda outcome: outcome.results.get(name, {}).get(column, ABSENT)


def per_second(count: Callable, seconds: Callable) -> Callable[[str], Callable]:
    def value(outcome):
        elapsed = seconds(outcome)
        return count(outcome) / elapsed if elapsed else math.nan
    return lambda column: value


def fixed(function: Callable) -> Callable[[str], Callable]:
    return lambda column: function


@dataclass(frozen=True)
class Column:
    name: str
    definition: str
    higher_is_better: bool | None = None  # None: no better direction (a fact, or a distribution's shape)
    aggregation: str = ""  # how per-item values become the reported number ("" for a fact of the run)
    decimals: int = 3  # rounding in published tables
    shown: tuple[str, ...] = ()  # TERMINAL, HEADLINE, COMPARED
    kind: str = "metric"  # "identity", "metric" (measured) or "run" (a fact of how it was computed)
    source: Callable[[str], Callable] | None = None  # (column name) -> (generation outcome) -> value or ABSENT
    varies: bool = False  # differs between two runs of one config and seed (a wall time), so never compared

    def value(self, outcome) -> Any:
        return ABSENT if self.source is None else self.source(self.name)(outcome)

    @property
    def arrow(self) -> str:
        """↑ where higher is better, ↓ where lower is, nothing where neither (table headers, titles)."""
        return "↑" if self.higher_is_better is True else "↓" if self.higher_is_better is False else ""


def Metric(name: str, definition: str, higher_is_better: bool | None, aggregation: str, decimals: int,  # noqa: N802
           shown: tuple[str, ...] = (), source: Callable | None = None) -> Column:
    return Column(name, definition, higher_is_better, aggregation, decimals, shown, "metric", source)


def Fact(name: str, definition: str, decimals: int = 3, shown: tuple[str, ...] = (),  # noqa: N802
         source: Callable | None = None, varies: bool = False) -> Column:
    return Column(name, definition, None, "", decimals, shown, "run", source, varies)


def detector_column(detector: str, measure: str) -> str:
    """``detector_fast_detectgpt_auroc``: one detector's precision, recall or AUROC."""
    return f"detector_{detector.replace('-', '_')}_{measure}"


def _detector(detector: str, key: str) -> Callable[[str], Callable]:
    def value(outcome):
        report = outcome.decontamination
        measured = (report or {}).get("detectors", {}).get(detector)
        return ABSENT if measured is None else measured[key]
    return lambda column: value


def _decontamination(key: str, without_cue: bool = False) -> Callable[[str], Callable]:
    def value(outcome):
        report = outcome.decontamination
        if report is None:
            return ABSENT
        return report.get("without_end_of_text_cue", {}).get(key) if without_cue else report[key]
    return lambda column: value


IDENTITY = (
    Column("generation", "The generation (0 trains on human text).", kind="identity",
           source=fixed(lambda outcome: outcome.index)),
    Column("seed", "The run's seed.", kind="identity", source=fixed(lambda outcome: outcome.seed)),
    Column("family", "With model.chain: the model family (chain entry) the generation was trained in and "
           "wrote its corpus with.", kind="identity",
           source=fixed(lambda outcome: ABSENT if outcome.family is None else outcome.family)),
)

METRICS = (

    Metric(
        "ppl_blocks",
        "Perplexity on the held-out human split over non-overlapping blocks (the reference code's "
        "method): exp of the mean NLL of every predicted token.",
        False, "token-weighted mean NLL, exponentiated", 2, shown=(TERMINAL, HEADLINE, COMPARED),
        source=result("perplexity")),
    Metric(
        "ppl_blocks_no_eos",
        "Perplexity over the same held-out blocks with every target that is the tokenizer's "
        "end-of-text token left out (it stays as context): OPT's </s> is both BOS and EOS and opens "
        "every line of the held-out text, while min_new_tokens keeps it out of synthetic text, so "
        "later generations never learn it; this column shows the perplexity without that confound.",
        False, "token-weighted mean NLL, exponentiated", 2, source=result("perplexity")),
    Metric(
        "bits_per_byte",
        "Bits per byte of the held-out human text: the NLL (in bits) of the targets ppl_blocks_no_eos "
        "scores, divided by the UTF-8 bytes of their text. Perplexity is per token of the model's own "
        "tokenizer; bits per byte is per byte of the same text, so it compares generations of "
        "different model families (model.chain).",
        False, "NLL summed over targets, per byte of their text", 4, shown=(HEADLINE,),
        source=result("perplexity")),
    Metric(
        "ppl_sliding",
        "Perplexity on the held-out human split with a sliding window: every token after the first "
        "scored once with up to window-1 tokens of context (for a stride below the window); exp of the "
        "mean NLL.",
        False, "token-weighted mean NLL, exponentiated", 2, shown=(TERMINAL, HEADLINE), source=result("perplexity")),
    *(Metric(
        self_bleu_column(n),
        f"Self-BLEU-{n} of the synthetic corpus within a fixed subsample of M samples, drawn with the "
        f"run's seed (M = evaluate.self_bleu_samples, 1,000 by default; every sample when the corpus "
        f"has no more than M): each sample of the subsample is the hypothesis and the other M - 1 "
        f"samples of the subsample are its references (NLTK sentence_bleu, weights 1/{n}, configured "
        f"smoothing); mean over the M hypotheses.",
        False, "mean over the M hypotheses of the subsample", 4,
        shown=(TERMINAL, HEADLINE, COMPARED) if n == 4 else (), source=result("text_metrics"))
        for n in ORDERS),
    *(Metric(
        distinct_column(n),
        f"Distinct-{n} of the synthetic corpus: distinct {n}-grams / the total number of {n}-grams, "
        f"over all samples together (n-grams never cross samples; Li et al. 2016 divide by the number "
        f"of tokens instead: {distinct_column(n, 'li')}).",
        True, "corpus-level ratio", 4, shown=(TERMINAL, HEADLINE, COMPARED) if n == 2 else (),
        source=result("text_metrics")) for n in ORDERS),
    *(Metric(
        distinct_column(n, "li"),
        f"Distinct-{n} as Li et al. (2016) define it: distinct {n}-grams / the total number of tokens, "
        f"over all samples together (n-grams never cross samples)"
        + (f"; the same as {distinct_column(1)}." if n == 1 else f"; never above {distinct_column(n)}."),
        True, "corpus-level ratio", 4, source=result("text_metrics")) for n in ORDERS),
    *(Metric(
        distinct_column(n, "per_sample"),
        f"Distinct-{n} inside each synthetic sample (distinct {n}-grams / total {n}-grams of the "
        f"sample), averaged over the samples that have at least one {n}-gram.",
        True, "mean over samples", 4, source=result("text_metrics")) for n in ORDERS),
    *(Metric(
        tail_column(q),
        f"The {q}th percentile of per-sample perplexity of the synthetic corpus under the "
        "generation-0 model (the paper's tail histograms).",
        None, "percentile over samples", 2,
        shown={50: (TERMINAL, HEADLINE), 99: (TERMINAL,)}.get(q, ()), source=result("tails")) for q in TAIL_QUANTILES),
    Metric(
        "rare_survival",
        "Fraction of the human training corpus's rare n-grams (count at most the configured "
        "threshold) that occur at least once in the synthetic corpus.",
        True, "fraction of n-gram types", 4, shown=(TERMINAL, HEADLINE, COMPARED), source=result("text_metrics")),
    Metric(
        "mauve",
        "MAUVE (Pillutla et al. 2021) between the synthetic corpus and held-out human blocks: N texts "
        "of each (seeded, the same every generation; N = evaluate.mauve_samples, 1,000 by default) "
        "embedded by one fixed featurizer for the whole run (the base model's final hidden state at "
        "the last token, or evaluate.mauve_featurizer), quantised together by k-means (N/10 clusters "
        "unless evaluate.mauve_clusters), the area under the divergence frontier (scaling 5), by "
        "mauve.compute_mauve. 1: the two samples are indistinguishable at that resolution.",
        True, "one score over both samples", 3, shown=(TERMINAL, HEADLINE, COMPARED), source=result("mauve")),
    Metric(
        "watermark_ppl",
        "With generate.watermark: perplexity of the watermarked corpus under the model that wrote it, "
        "without the bias (exp of the mean NLL of every new token).",
        None, "token-weighted mean NLL, exponentiated", 2, shown=(HEADLINE,), source=result("watermark")),
    Metric(
        "watermark_ppl_unbiased",
        "What watermark_ppl would be without the watermark: exp of the mean entropy of the writer's "
        "next-token distribution at the same contexts (the expected NLL of a token drawn without the "
        "bias). The gap is the change the watermark makes to the distribution studied.",
        None, "token-weighted mean entropy, exponentiated", 2, shown=(HEADLINE,), source=result("watermark")),
    Metric(
        "watermark_detected",
        "With generate.watermark: the share of the corpus whose watermark z-score exceeds "
        "decontaminate.watermark_threshold (transformers' WatermarkDetector with the run's key).",
        True, "fraction of samples", 4, source=result("watermark")),
    Metric(
        "decontam_precision",
        "Decontamination: of the candidates the detector dropped as synthetic, the fraction that were "
        "synthetic (provenance labels; candidates the detector was not fitted on).",
        True, "fraction of dropped records", 4, source=_decontamination("precision")),
    Metric(
        "decontam_recall",
        "Decontamination: of the synthetic candidates, the fraction the detector dropped (same records).",
        True, "fraction of synthetic records", 4, source=_decontamination("recall")),
    Metric(
        "decontam_precision_no_eos",
        "decontam_precision of the same detector fitted and measured again with the end-of-text token "
        "removed from every record: OPT's </s> opens every human line and never occurs in synthetic "
        "text, a trivial cue; this is what the detector achieves without it (reported, not used to filter).",
        True, "fraction of dropped records", 4, source=_decontamination("precision", without_cue=True)),
    Metric(
        "decontam_recall_no_eos",
        "decontam_recall of the same detector with the end-of-text token removed from every record "
        "(see decontam_precision_no_eos).",
        True, "fraction of synthetic records", 4, source=_decontamination("recall", without_cue=True)),
    *(Metric(
        detector_column(detector, measure),
        f"The {detector} detector, measured on each generation's decontamination candidates (whether "
        f"or not it filters: decontaminate.detector and decontaminate.measure) against their provenance "
        f"labels, on the records it was not fitted on: " + {
            "precision": "of the records it flags as synthetic, the fraction that are.",
            "recall": "of the synthetic records, the fraction it flags.",
            "auroc": "the area under the ROC curve of its score (sklearn.metrics.roc_auc_score; 0.5 is chance)."}[measure],
        True, {"precision": "fraction of flagged records", "recall": "fraction of synthetic records",
               "auroc": "over held-out records"}[measure], 4,
        shown=(HEADLINE,) if measure == "auroc" else (), source=_detector(detector, measure))
        for detector in DETECTORS for measure in ("precision", "recall", "auroc")),
)

def _selection(key: str) -> Callable[[str], Callable]:
    def value(outcome):
        selection = outcome.train_log.get("selection")
        return selection[key] if selection else ABSENT
    return lambda column: value


def _train_log(key: str) -> Callable:
    return lambda outcome: outcome.train_log[key]


def _synthetic(key: str) -> Callable:
    return lambda outcome: sum(shard[key] for shard in outcome.shards)


def _timing(key: str) -> Callable:
    return lambda outcome: outcome.timings[key]


RUN_FACTS = (
    Fact("self_bleu_samples", "How many synthetic samples self-BLEU was computed on (a seeded subsample, or all).",
         source=result("text_metrics")),
    Fact("self_bleu_seed", "Seed of that subsample (the same indices every generation).", source=result("text_metrics")),
    Fact("self_bleu_smoothing", "NLTK smoothing function used in self-BLEU.", source=result("text_metrics")),
    Fact("text_tokenization", "How text was split into words for self-BLEU, distinct-n and rare n-grams.",
         source=result("text_metrics")),
    Fact("mauve_samples", "Texts a side that MAUVE compared.", source=fixed(
        lambda outcome: outcome.results.get("mauve", {}).get("samples", ABSENT))),
    Fact("train_blocks", "Blocks in the generation's training set.", source=fixed(lambda outcome: len(outcome.train_set))),
    Fact("train_human_fraction", "Fraction of those blocks that are human text (from the provenance column).",
         source=fixed(lambda outcome: outcome.sources.get(HUMAN, 0) / max(len(outcome.train_set), 1))),
    Fact("decontam_dropped", "Candidate records the decontamination filter removed before training.",
         source=fixed(lambda o: ABSENT if o.decontamination is None else o.decontamination["candidates"] - o.decontamination["kept"])),
    Fact("train_tokens", "Tokens seen in training (all epochs).", source=fixed(_train_log("tokens"))),
    Fact("train_steps", "Optimizer steps.", source=fixed(_train_log("steps"))),
    Fact("train_loss", "Mean training loss (token NLL) over the kept epoch: the last, or the best on validation.",
         shown=(TERMINAL,), source=fixed(_train_log("final_loss"))),
    Fact("train_epoch_kept", "The epoch (from 0) whose weights the generation kept, with train.select=best-validation.",
         source=_selection("epoch")),
    Fact("train_val_loss", "Loss (token NLL) of the kept weights on the human validation blocks (train.select=best-validation).",
         source=_selection("validation_loss")),
    Fact("train_seconds", "Wall time of training.", 1, shown=(TERMINAL,), source=fixed(_timing("train_seconds")),
         varies=True),
    Fact("train_tokens_per_second", "Training throughput.", 1,
         source=per_second(_train_log("tokens"), _train_log("seconds")), varies=True),
    Fact("synthetic_samples", "Records in the synthetic corpus the generation wrote.", source=fixed(_synthetic("records"))),
    Fact("synthetic_tokens", "New tokens in that corpus.", source=fixed(_synthetic("new_tokens"))),
    Fact("generate_seconds", "Wall time of writing the synthetic corpus.", 1, source=fixed(_timing("generate_seconds")),
         varies=True),
    Fact("generate_tokens_per_second", "New tokens per second while generating.", 1,
         source=per_second(_synthetic("new_tokens"), _timing("generate_seconds")), varies=True),
    Fact("eval_seconds", "Wall time of evaluation (perplexities, text metrics, tails).", 1,
         source=fixed(_timing("eval_seconds")), varies=True),
)

COLUMNS: dict[str, Column] = {c.name: c for c in (*IDENTITY, *METRICS, *RUN_FACTS)}
REGISTRY: dict[str, Column] = {c.name: c for c in METRICS}


def shown_in(table: str) -> list[str]:
    """The columns a table shows, in catalogue order."""
    return [name for name, column in COLUMNS.items() if table in column.shown]


VARYING = frozenset(name for name, column in COLUMNS.items() if column.varies)
# The wall time of each stage of a generation, in stage order (the report's timings table).
STAGE_SECONDS = tuple(name for name, column in COLUMNS.items() if column.varies and name.endswith("_seconds"))


def reproducible(row: dict) -> dict:
    """``row`` without the columns that differ between two runs of one config and seed (wall times):
    what "the same results" means when runs are compared."""
    return {key: value for key, value in row.items() if key not in VARYING}


@dataclass(frozen=True)
class GenerationOutcome:
    """What a generation's columns are read from: its training set and training log, its corpus's
    shard sidecars, its evaluation results, its timings and its decontamination report."""

    index: int
    seed: int
    train_set: Any  # a records Dataset
    sources: dict[str, int]  # records per provenance source in the training set
    train_log: dict
    shards: list[dict]
    results: dict[str, dict]  # perplexity, text_metrics, tails, mauve
    timings: dict[str, float]
    decontamination: dict | None
    family: str | None = None  # the chain entry it was trained in (model.chain), else None


def metrics_row(outcome: GenerationOutcome) -> dict:
    """The generation's row of ``metrics.csv``: every catalogue column the generation has a value for."""
    row = {}
    for name, column in COLUMNS.items():
        value = column.value(outcome)
        if value is not ABSENT:
            row[name] = value
    return row
