"""Publishable results: tables and figures for one run or a folder of runs.

    write_report(Path("runs/tiny"))              # -> runs/tiny/report/
    write_report(Path("runs/regimes"))           # every run below, seeds aggregated, regimes side by side

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

from lmcollapse.report.pages import write_report
from lmcollapse.report.runs import Group, RunRecord, aggregate, discover_runs, group_runs, group_table

__all__ = ["Group", "RunRecord", "aggregate", "discover_runs", "group_runs", "group_table", "write_report"]
