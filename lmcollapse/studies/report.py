"""A study's report: the ordinary report of its runs (metrics, figures, sample continuations,
settings), with its variants compared with its reference, each with its 95% confidence interval,
p-values adjusted by Holm and effect sizes (report/inference.py), and its plan.

    write_study_report(study)          # -> <root>/report/
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.errors import LmcollapseError
from lmcollapse.report import write_report
from lmcollapse.run.atomic import write_text_atomic
from lmcollapse.studies.spec import Study


def write_study_report(study: Study, out: Path | None = None) -> Path:
    out = Path(out) if out else study.root / "report"
    if not study.root.is_dir():
        raise LmcollapseError(f"study {study.name} has no runs yet in {study.root}/: build them first, e.g. "
                              f"lmcollapse study run {study.path}")
    # the study's runs only: its folder may still hold runs of seeds or variants since removed from the file
    written = write_report(study.root, out, reference=study.reference, compared=list(study.spec.metrics) or None,
                           title=f"lmcollapse study: {study.name}", only=[run.folder for run in study.runs()])
    write_text_atomic(out / "study.yaml", study.path.read_text(encoding="utf-8"))
    return written
