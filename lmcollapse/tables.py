"""A run's metrics as ``metrics.csv`` / ``metrics.json``, and as a table on the terminal.

One row per generation, in the column order below; the reference rows (the base model's
zero-shot perplexity, the human corpus's own diversity) live in ``metrics.json`` and head the
printed table.

    write_metrics(run, rows, header)
    print(format_table(rows, reference))
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from lmcollapse.atomic import canonical_json, write_text_atomic
from lmcollapse.metrics import REGISTRY
from lmcollapse.rundir import RunDir

IDENTITY_COLUMNS = ["generation", "seed"]
RUN_COLUMNS = {
    "self_bleu_samples": "How many synthetic samples self-BLEU was computed on (a seeded subsample, or all).",
    "self_bleu_seed": "Seed of that subsample (the same indices every generation).",
    "self_bleu_smoothing": "NLTK smoothing function used in self-BLEU.",
    "text_tokenization": "How text was split into words for self-BLEU, distinct-n and rare n-grams.",
    "train_blocks": "Blocks in the generation's training set.",
    "train_human_fraction": "Fraction of those blocks that are human text (from the provenance column).",
    "decontam_dropped": "Candidate records the decontamination filter removed before training.",
    "train_tokens": "Tokens seen in training (all epochs).",
    "train_steps": "Optimizer steps.",
    "train_loss": "Mean training loss (token NLL) over the kept epoch: the last, or the best on validation.",
    "train_epoch_kept": "The epoch (from 0) whose weights the generation kept, with train.select=best-validation.",
    "train_val_loss": "Loss (token NLL) of the kept weights on the human validation blocks (train.select=best-validation).",
    "train_seconds": "Wall time of training.",
    "train_tokens_per_second": "Training throughput.",
    "synthetic_samples": "Records in the synthetic corpus the generation wrote.",
    "synthetic_tokens": "New tokens in that corpus.",
    "generate_seconds": "Wall time of writing the synthetic corpus.",
    "generate_tokens_per_second": "New tokens per second while generating.",
    "eval_seconds": "Wall time of evaluation (perplexities, text metrics, tails).",
}


def all_columns(rows: list[dict]) -> list[str]:
    """Identity, metric and run columns present in ``rows``, in a stable order."""
    present = {key for row in rows for key in row}
    ordered = IDENTITY_COLUMNS + [m for m in REGISTRY if m in present] + [c for c in RUN_COLUMNS if c in present]
    return ordered + sorted(present - set(ordered))


def write_metrics(run: RunDir, rows: list[dict], header: dict) -> None:
    columns = all_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    # Written only when missing or different: a complete run that is read again stays untouched
    # (and a read-only one readable), while a deleted or stale table is rebuilt.
    _write_if_changed(run.metrics_csv, buffer.getvalue())
    _write_if_changed(run.metrics_json, canonical_json({**header, "columns": columns, "generations": rows}, indent=2) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


TERMINAL_COLUMNS = ["ppl_blocks", "ppl_sliding", "self_bleu_4", "distinct_2", "tail_ppl_p50", "tail_ppl_p99",
                    "rare_survival", "train_loss", "train_seconds"]


def format_table(rows: list[dict], reference: dict | None = None, columns: list[str] | None = None) -> str:
    """A fixed-width table: reference rows (base, human) first, then one row per generation."""
    present = {k for row in rows for k in row} | {k for r in (reference or {}).values() for k in r}
    columns = [c for c in (columns or TERMINAL_COLUMNS) if c in present]
    table = [["generation"] + columns]
    for label, values in (reference or {}).items():
        table.append([label] + [_fmt(c, values.get(c)) for c in columns])
    for row in rows:
        table.append([str(row["generation"])] + [_fmt(c, row.get(c)) for c in columns])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        decimals = REGISTRY[column].decimals if column in REGISTRY else (1 if "seconds" in column else 3)
        return f"{value:.{decimals}f}"
    return str(value)
