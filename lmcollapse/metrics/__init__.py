"""The collapse metrics: one registry of definitions, and the functions that compute them.

Every column a run reports is defined once, in the catalogue (``columns.py``): its one-line
definition (printed under every table), whether higher is better, how per-item values are
aggregated, and which tables show it. The functions take plain samples or a model and tokenizer,
never a hub id:

    from lmcollapse.metrics import self_bleu, distinct_n, perplexity, REGISTRY
    self_bleu(texts, max_n=4)           # leave-one-out inside a seeded subsample of 1,000, NLTK semantics
    distinct_n(texts, 2)                # corpus-level distinct bigrams / total bigrams
    distinct_n_li(texts, 2)             # Li et al. (2016): distinct bigrams / total tokens
    perplexity(model, tokenizer, texts, method="sliding", window=128, stride=64)
    print(REGISTRY["ppl_blocks"].definition)
    evaluate.load(evaluate_module_path("self_bleu"))   # the same, as `evaluate` modules
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmcollapse.metrics.columns import COLUMNS, REGISTRY, TAIL_QUANTILES, Column, shown_in
from lmcollapse.metrics.distinct import distinct_n, distinct_n_li, distinct_n_per_sample, rare_ngram_survival
from lmcollapse.metrics.self_bleu import self_bleu, self_bleu_scores

# The perplexities need torch (2 s to import), which the tables, `status` and a study's coordinator,
# readers of the catalogue alone, never load: imported on first use. (Their module's name is not
# one of these names: a submodule, once imported, would shadow the function of its name here.)
_PERPLEXITIES = {"PerplexityResult", "perplexity", "perplexity_blocks", "perplexity_sliding", "sample_perplexities"}


def __getattr__(name: str):
    if name not in _PERPLEXITIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.perplexities"), name)


EVALUATE_MODULES = Path(__file__).resolve().parent.parent / "evaluate_modules"


def evaluate_module_path(name: str) -> str:
    """Folder of an ``evaluate`` metric module shipped here: ``evaluate.load(evaluate_module_path("self_bleu"))``."""
    folder = EVALUATE_MODULES / name
    if not (folder / f"{name}.py").is_file():
        raise ValueError(f"no evaluate module {name!r}: choose one of {sorted(p.name for p in EVALUATE_MODULES.iterdir() if p.is_dir())}")
    return str(folder)


def tail_quantile(q: float) -> Callable[[np.ndarray], float]:
    """The q-th percentile of per-sample perplexities (``sample_perplexities``), ignoring nan."""
    def quantile(values: np.ndarray) -> float:
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        return float(np.percentile(finite, q)) if len(finite) else float("nan")
    return quantile


__all__ = [
    "COLUMNS", "REGISTRY", "Column", "shown_in", "evaluate_module_path", "tail_quantile", "TAIL_QUANTILES", "PerplexityResult",
    "distinct_n", "distinct_n_li", "distinct_n_per_sample", "rare_ngram_survival",
    "perplexity", "perplexity_blocks", "perplexity_sliding", "sample_perplexities",
    "self_bleu", "self_bleu_scores",
]
