"""How well a human-vs-synthetic detector separates the records it was not fitted on.

    detection_report(truth, drop, labelled, score)   # precision, recall, F1, AUROC of "synthetic" on the held-back records
"""

from __future__ import annotations

import numpy as np


def detection_report(truth: np.ndarray, drop: np.ndarray, labelled: np.ndarray, score: np.ndarray | None = None) -> dict:
    """Precision, recall and F1 of 'synthetic' on the records the detector was not fitted on, and
    with ``score`` (higher: more likely synthetic) the AUROC of that score on the same records.

    ``truth``: the record is synthetic (its provenance); ``drop``: the detector dropped it;
    ``labelled``: the record was in the detector's labelled fitting sample (left out of the scores).
    """
    held = ~labelled
    auroc = float("nan")
    if score is not None and truth[held].any() and not truth[held].all():
        from sklearn.metrics import roc_auc_score

        auroc = float(roc_auc_score(truth[held], score[held]))
    tp = int((drop & truth & held).sum())
    fp = int((drop & ~truth & held).sum())
    fn = int((~drop & truth & held).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "auroc": auroc,
            "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "dropped_human": int((drop & ~truth).sum()), "dropped_synthetic": int((drop & truth).sum())}
