"""The column catalogue: every column a run reports, defined once.

Each column of ``metrics.csv`` is registered here with its one-line definition (printed under
every table), whether higher is better, how per-item values become the reported number, its
decimals in published tables, and which tables show it. The metrics row of a generation is built
from this catalogue, the terminal table and the report's headline and comparison tables are
views of it, and a test checks that every column a run writes has an entry.

    COLUMNS["ppl_blocks"].definition
    shown_in(TERMINAL)                     # the columns `make run` prints, in order
    REGISTRY                               # the measured metrics only (no identity or run facts)
"""

from __future__ import annotations

from dataclasses import dataclass

TAIL_QUANTILES = (1, 5, 50, 95, 99)

# The tables a column can be shown in, besides metrics.csv / metrics.json (which hold every column).
TERMINAL = "terminal"  # the table `make run` prints after each generation
HEADLINE = "headline"  # the report's per-generation tables (mean ± sd over seeds)
COMPARED = "compared"  # the report's comparison of pipelines at the last generation


@dataclass(frozen=True)
class Column:
    name: str
    definition: str
    higher_is_better: bool | None = None  # None: no better direction (a fact, or a distribution's shape)
    aggregation: str = ""  # how per-item values become the reported number ("" for a fact of the run)
    decimals: int = 3  # rounding in published tables
    shown: tuple[str, ...] = ()  # TERMINAL, HEADLINE, COMPARED
    kind: str = "metric"  # "identity", "metric" (measured) or "run" (a fact of how it was computed)

    @property
    def arrow(self) -> str:
        """↑ where higher is better, ↓ where lower is, nothing where neither (table headers, titles)."""
        return "↑" if self.higher_is_better is True else "↓" if self.higher_is_better is False else ""


def Metric(name: str, definition: str, higher_is_better: bool | None, aggregation: str, decimals: int,  # noqa: N802
           shown: tuple[str, ...] = ()) -> Column:
    return Column(name, definition, higher_is_better, aggregation, decimals, shown, "metric")


def Fact(name: str, definition: str, decimals: int = 3, shown: tuple[str, ...] = ()) -> Column:  # noqa: N802
    return Column(name, definition, None, "", decimals, shown, "run")


IDENTITY = (
    Column("generation", "The generation (0 trains on human text).", kind="identity"),
    Column("seed", "The run's seed.", kind="identity"),
)

METRICS = (

    Metric(
        "ppl_blocks",
        "Perplexity on the held-out human split over non-overlapping blocks (the reference code's "
        "method): exp of the mean NLL of every predicted token.",
        False, "token-weighted mean NLL, exponentiated", 2, shown=(TERMINAL, HEADLINE, COMPARED)),
    Metric(
        "ppl_blocks_no_eos",
        "Perplexity over the same held-out blocks with every target that is the tokenizer's "
        "end-of-text token left out (it stays as context): OPT's </s> is both BOS and EOS and opens "
        "every line of the held-out text, while min_new_tokens keeps it out of synthetic text, so "
        "later generations never learn it; this column shows the perplexity without that confound.",
        False, "token-weighted mean NLL, exponentiated", 2),
    Metric(
        "ppl_sliding",
        "Perplexity on the held-out human split with a sliding window: every token scored once "
        "with up to window-1 tokens of context; exp of the mean NLL.",
        False, "token-weighted mean NLL, exponentiated", 2, shown=(TERMINAL, HEADLINE)),
    *(Metric(
        f"self_bleu_{n}",
        f"Self-BLEU-{n} of the synthetic corpus within a fixed subsample of M samples, drawn with the "
        f"run's seed (M = evaluate.self_bleu_samples, 1,000 by default; every sample when the corpus "
        f"has no more than M): each sample of the subsample is the hypothesis and the other M - 1 "
        f"samples of the subsample are its references (NLTK sentence_bleu, weights 1/{n}, configured "
        f"smoothing); mean over the M hypotheses.",
        False, "mean over the M hypotheses of the subsample", 4,
        shown=(TERMINAL, HEADLINE, COMPARED) if n == 4 else ())
        for n in range(1, 9)),
    *(Metric(
        f"distinct_{n}",
        f"Distinct-{n} of the synthetic corpus: distinct {n}-grams / the total number of {n}-grams, "
        f"over all samples together (n-grams never cross samples; Li et al. 2016 divide by the number "
        f"of tokens instead: distinct_{n}_li).",
        True, "corpus-level ratio", 4, shown=(TERMINAL, HEADLINE, COMPARED) if n == 2 else ()) for n in range(1, 9)),
    *(Metric(
        f"distinct_{n}_li",
        f"Distinct-{n} as Li et al. (2016) define it: distinct {n}-grams / the total number of tokens, "
        f"over all samples together (n-grams never cross samples)"
        + ("; the same as distinct_1." if n == 1 else f"; never above distinct_{n}."),
        True, "corpus-level ratio", 4) for n in range(1, 9)),
    *(Metric(
        f"distinct_{n}_per_sample",
        f"Distinct-{n} inside each synthetic sample (distinct {n}-grams / total {n}-grams of the "
        f"sample), averaged over the samples that have at least one {n}-gram.",
        True, "mean over samples", 4) for n in range(1, 9)),
    *(Metric(
        f"tail_ppl_p{q}",
        f"The {q}th percentile of per-sample perplexity of the synthetic corpus under the "
        "generation-0 model (the paper's tail histograms).",
        None, "percentile over samples", 2,
        shown={50: (TERMINAL, HEADLINE), 99: (TERMINAL,)}.get(q, ())) for q in TAIL_QUANTILES),
    Metric(
        "rare_survival",
        "Fraction of the human training corpus's rare n-grams (count at most the configured "
        "threshold) that occur at least once in the synthetic corpus.",
        True, "fraction of n-gram types", 4, shown=(TERMINAL, HEADLINE, COMPARED)),
    Metric(
        "decontam_precision",
        "Decontamination: of the candidates the detector dropped as synthetic, the fraction that were "
        "synthetic (provenance labels; candidates the detector was not fitted on).",
        True, "fraction of dropped records", 4),
    Metric(
        "decontam_recall",
        "Decontamination: of the synthetic candidates, the fraction the detector dropped (same records).",
        True, "fraction of synthetic records", 4),
    Metric(
        "decontam_precision_no_eos",
        "decontam_precision of the same detector fitted and measured again with the end-of-text token "
        "removed from every record: OPT's </s> opens every human line and never occurs in synthetic "
        "text, a trivial cue; this is what the detector achieves without it (reported, not used to filter).",
        True, "fraction of dropped records", 4),
    Metric(
        "decontam_recall_no_eos",
        "decontam_recall of the same detector with the end-of-text token removed from every record "
        "(see decontam_precision_no_eos).",
        True, "fraction of synthetic records", 4),
)

RUN_FACTS = (
    Fact("self_bleu_samples", "How many synthetic samples self-BLEU was computed on (a seeded subsample, or all)."),
    Fact("self_bleu_seed", "Seed of that subsample (the same indices every generation)."),
    Fact("self_bleu_smoothing", "NLTK smoothing function used in self-BLEU."),
    Fact("text_tokenization", "How text was split into words for self-BLEU, distinct-n and rare n-grams."),
    Fact("train_blocks", "Blocks in the generation's training set."),
    Fact("train_human_fraction", "Fraction of those blocks that are human text (from the provenance column)."),
    Fact("decontam_dropped", "Candidate records the decontamination filter removed before training."),
    Fact("train_tokens", "Tokens seen in training (all epochs)."),
    Fact("train_steps", "Optimizer steps."),
    Fact("train_loss", "Mean training loss (token NLL) over the kept epoch: the last, or the best on validation.",
         shown=(TERMINAL,)),
    Fact("train_epoch_kept", "The epoch (from 0) whose weights the generation kept, with train.select=best-validation."),
    Fact("train_val_loss", "Loss (token NLL) of the kept weights on the human validation blocks (train.select=best-validation)."),
    Fact("train_seconds", "Wall time of training.", 1, shown=(TERMINAL,)),
    Fact("train_tokens_per_second", "Training throughput.", 1),
    Fact("synthetic_samples", "Records in the synthetic corpus the generation wrote."),
    Fact("synthetic_tokens", "New tokens in that corpus."),
    Fact("generate_seconds", "Wall time of writing the synthetic corpus.", 1),
    Fact("generate_tokens_per_second", "New tokens per second while generating.", 1),
    Fact("eval_seconds", "Wall time of evaluation (perplexities, text metrics, tails).", 1),
)

COLUMNS: dict[str, Column] = {c.name: c for c in (*IDENTITY, *METRICS, *RUN_FACTS)}
REGISTRY: dict[str, Column] = {c.name: c for c in METRICS}


def shown_in(table: str) -> list[str]:
    """The columns a table shows, in catalogue order."""
    return [name for name, column in COLUMNS.items() if table in column.shown]
