"""A study's report: the ordinary report of its runs (metrics, figures, sample continuations,
settings), with its variants compared with its reference, each with its 95% confidence interval,
p-values adjusted by Holm and effect sizes (report/inference.py), and its plan.

    write_study_report(study)          # -> <root>/report/
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.report import write_report
from lmcollapse.run.atomic import write_text_atomic
from lmcollapse.studies.spec import Study


def write_study_report(study: Study, out: Path | None = None) -> Path:
    out = Path(out) if out else study.root / "report"
    written = write_report(study.root, out, reference=study.reference, compared=list(study.spec.metrics) or None,
                           title=f"lmcollapse study: {study.name}")
    write_text_atomic(out / "study.yaml", study.path.read_text(encoding="utf-8"))
    return written
