"""A study's report: the ordinary report of its runs (metrics, figures, sample continuations,
settings), with its variants compared with its reference, each with its 95% confidence interval,
p-values adjusted by Holm and effect sizes (report/inference.py), and its plan.

    write_study_report(study)          # -> <root>/report/
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmcollapse.errors import LmcollapseError
from lmcollapse.report import write_report
from lmcollapse.run.atomic import write_text_atomic
from lmcollapse.run.commands import study_command
from lmcollapse.studies.spec import Study
from lmcollapse.studies.status import changed_config

log = logging.getLogger(__name__)


def write_study_report(study: Study, out: Path | None = None) -> Path:
    out = Path(out) if out else study.root / "report"
    if not study.root.is_dir():
        raise LmcollapseError(f"study {study.name} has no runs yet in {study.root}/: build them first, e.g. "
                              f"{study_command('run', study.path)}")
    # the study's runs only: its folder may still hold runs of seeds or variants since removed from the
    # file, or runs built before a variant's settings were edited (its name kept): those are not its runs
    runs, changed = [], []
    for run in study.runs():
        (changed if changed_config(run) is not None else runs).append(run)
    if changed and not runs:
        raise LmcollapseError(f"every run of study {study.name} was built from another config than its variants give "
                              f"now (`{study_command('status', study.path)}` says how): move {study.root} away and run "
                              f"{study_command('run', study.path)} to build them again")
    if changed:
        log.warning("left out %d run(s) built from another config than the study's variant gives now (%s): move them "
                    "away and run %s to build them again", len(changed),
                    ", ".join(run.name for run in changed), study_command("run", study.path))
    written = write_report(study.root, out, reference=study.reference, compared=list(study.spec.metrics) or None,
                           title=f"lmcollapse study: {study.name}", only=[run.folder for run in runs])
    write_text_atomic(out / "study.yaml", study.path.read_text(encoding="utf-8"))
    return written
