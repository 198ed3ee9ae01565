"""The collapse metrics: one registry of definitions, and the functions that compute them.

Every column a run reports is registered here with its one-line definition (printed under every
table), whether higher is better, and how per-item values are aggregated. The functions take
plain samples or a model and tokenizer, never a hub id:

    from lmcollapse.metrics import self_bleu, distinct_n, perplexity, REGISTRY
    self_bleu(texts, max_n=4)           # leave-one-out inside a seeded subsample of 1,000, NLTK semantics
    distinct_n(texts, 2)                # corpus-level distinct bigrams / total bigrams
    distinct_n_li(texts, 2)             # Li et al. (2016): distinct bigrams / total tokens
    perplexity(model, tokenizer, texts, method="sliding", window=128, stride=64)
    print(REGISTRY["ppl_blocks"].definition)
    evaluate.load(evaluate_module_path("self_bleu"))   # the same, as `evaluate` modules
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcollapse.metrics.detection import detection_report
from lmcollapse.metrics.distinct import distinct_n, distinct_n_li, distinct_n_per_sample, rare_ngram_survival
from lmcollapse.metrics.perplexity import (
    PerplexityResult,
    perplexity,
    perplexity_blocks,
    perplexity_sliding,
    sample_perplexities,
)
from lmcollapse.metrics.self_bleu import self_bleu, self_bleu_scores

TAIL_QUANTILES = (1, 5, 50, 95, 99)
EVALUATE_MODULES = Path(__file__).resolve().parent.parent / "evaluate_modules"


def evaluate_module_path(name: str) -> str:
    """Folder of an ``evaluate`` metric module shipped here: ``evaluate.load(evaluate_module_path("self_bleu"))``."""
    folder = EVALUATE_MODULES / name
    if not (folder / f"{name}.py").is_file():
        raise ValueError(f"no evaluate module {name!r}: choose one of {sorted(p.name for p in EVALUATE_MODULES.iterdir() if p.is_dir())}")
    return str(folder)


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    definition: str
    higher_is_better: bool | None  # None: a description of the distribution, no better direction
    aggregation: str  # how per-item values become the reported number
    function: Callable  # computes it (see each function's signature)
    decimals: int = 3  # rounding in published tables


def _register(*metrics: MetricDefinition) -> dict[str, MetricDefinition]:
    return {m.name: m for m in metrics}


def tail_quantile(q: float) -> Callable[[np.ndarray], float]:
    """The q-th percentile of per-sample perplexities (``sample_perplexities``), ignoring nan."""
    def quantile(values: np.ndarray) -> float:
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        return float(np.percentile(finite, q)) if len(finite) else float("nan")
    return quantile


REGISTRY: dict[str, MetricDefinition] = _register(
    MetricDefinition(
        "ppl_blocks",
        "Perplexity on the held-out human split over non-overlapping blocks (the reference code's "
        "method): exp of the mean NLL of every predicted token.",
        False, "token-weighted mean NLL, exponentiated", perplexity_blocks, 2),
    MetricDefinition(
        "ppl_blocks_no_eos",
        "Perplexity over the same held-out blocks with every target that is the tokenizer's "
        "end-of-text token left out (it stays as context): OPT's </s> is both BOS and EOS and opens "
        "every line of the held-out text, while min_new_tokens keeps it out of synthetic text, so "
        "later generations never learn it; this column shows the perplexity without that confound.",
        False, "token-weighted mean NLL, exponentiated", perplexity_blocks, 2),
    MetricDefinition(
        "ppl_sliding",
        "Perplexity on the held-out human split with a sliding window: every token scored once "
        "with up to window-1 tokens of context; exp of the mean NLL.",
        False, "token-weighted mean NLL, exponentiated", perplexity_sliding, 2),
    *(MetricDefinition(
        f"self_bleu_{n}",
        f"Self-BLEU-{n} of the synthetic corpus within a fixed subsample of M samples, drawn with the "
        f"run's seed (M = evaluate.self_bleu_samples, 1,000 by default; every sample when the corpus "
        f"has no more than M): each sample of the subsample is the hypothesis and the other M - 1 "
        f"samples of the subsample are its references (NLTK sentence_bleu, weights 1/{n}, configured "
        f"smoothing); mean over the M hypotheses.",
        False, "mean over the M hypotheses of the subsample", functools.partial(self_bleu, max_n=n), 4)
        for n in range(1, 9)),
    *(MetricDefinition(
        f"distinct_{n}",
        f"Distinct-{n} of the synthetic corpus: distinct {n}-grams / the total number of {n}-grams, "
        f"over all samples together (n-grams never cross samples; Li et al. 2016 divide by the number "
        f"of tokens instead: distinct_{n}_li).",
        True, "corpus-level ratio", functools.partial(distinct_n, n=n), 4) for n in range(1, 9)),
    *(MetricDefinition(
        f"distinct_{n}_li",
        f"Distinct-{n} as Li et al. (2016) define it: distinct {n}-grams / the total number of tokens, "
        f"over all samples together (n-grams never cross samples)"
        + ("; the same as distinct_1." if n == 1 else f"; never above distinct_{n}."),
        True, "corpus-level ratio", functools.partial(distinct_n_li, n=n), 4) for n in range(1, 9)),
    *(MetricDefinition(
        f"distinct_{n}_per_sample",
        f"Distinct-{n} inside each synthetic sample (distinct {n}-grams / total {n}-grams of the "
        f"sample), averaged over the samples that have at least one {n}-gram.",
        True, "mean over samples", functools.partial(distinct_n_per_sample, n=n), 4) for n in range(1, 9)),
    *(MetricDefinition(
        f"tail_ppl_p{q}",
        f"The {q}th percentile of per-sample perplexity of the synthetic corpus under the "
        "generation-0 model (the paper's tail histograms).",
        None, "percentile over samples", tail_quantile(q), 2) for q in TAIL_QUANTILES),
    MetricDefinition(
        "rare_survival",
        "Fraction of the human training corpus's rare n-grams (count at most the configured "
        "threshold) that occur at least once in the synthetic corpus.",
        True, "fraction of n-gram types", rare_ngram_survival, 4),
    MetricDefinition(
        "decontam_precision",
        "Decontamination: of the candidates the detector dropped as synthetic, the fraction that were "
        "synthetic (provenance labels; candidates the detector was not fitted on).",
        True, "fraction of dropped records", detection_report, 4),
    MetricDefinition(
        "decontam_recall",
        "Decontamination: of the synthetic candidates, the fraction the detector dropped (same records).",
        True, "fraction of synthetic records", detection_report, 4),
    MetricDefinition(
        "decontam_precision_no_eos",
        "decontam_precision of the same detector fitted and measured again with the end-of-text token "
        "removed from every record: OPT's </s> opens every human line and never occurs in synthetic "
        "text, a trivial cue; this is what the detector achieves without it (reported, not used to filter).",
        True, "fraction of dropped records", detection_report, 4),
    MetricDefinition(
        "decontam_recall_no_eos",
        "decontam_recall of the same detector with the end-of-text token removed from every record "
        "(see decontam_precision_no_eos).",
        True, "fraction of synthetic records", detection_report, 4),
)


__all__ = [
    "REGISTRY", "evaluate_module_path", "tail_quantile", "TAIL_QUANTILES", "MetricDefinition", "PerplexityResult",
    "distinct_n", "distinct_n_li", "distinct_n_per_sample", "rare_ngram_survival",
    "perplexity", "perplexity_blocks", "perplexity_sliding", "sample_perplexities",
    "self_bleu", "self_bleu_scores",
]
