"""Studies: a grid of ordinary runs over pipelines, settings and seeds, launched many at once
(locally, or on SLURM through submitit), followed, and reported with the statistics a paper needs.

    study = load_study(Path("studies/regimes.yaml"))
    print(plan_study(study))                        # every run, its folder, its cost; computes nothing
    code = run_study(study)                         # builds what is not complete; resumable anywhere
    text, done = describe_study_status(study)
    write_study_report(study)                       # <root>/report/: tables with 95% intervals, tests, figures

A study adds only the list of runs, the launcher, the status and the report: every run is an
ordinary run in ``<root>/<variant>/seed-<k>``, built by the same command ``make generation-N``
builds it with, so an interrupted study (coordinator or job) finishes with the same runs as an
uninterrupted one.
"""

from __future__ import annotations

import importlib

# Imported on first use (PEP 562): the command line imports lmcollapse.studies.commands for its
# parser, and must not pay for the launchers (torch, the stages) on every other verb.
_EXPORTS = {"plan_study": "plan", "run_study": "plan", "write_study_report": "report", "Study": "spec",
            "StudyRun": "spec", "load_study": "spec", "describe_study_status": "status", "run_states": "status"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
