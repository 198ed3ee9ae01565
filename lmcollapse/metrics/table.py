"""A run's own tables: ``metrics.csv`` / ``metrics.json`` and the table on the terminal (the
report's Markdown and LaTeX tables are in ``report/tables.py``).

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

from lmcollapse.config import PipelineConfig
from lmcollapse.metrics.columns import COLUMNS, TERMINAL, shown_in
from lmcollapse.run.atomic import canonical_json, nan_as_null, write_text_atomic
from lmcollapse.run.integrity import off_lineage, verify_run
from lmcollapse.run.layout import RunDir
from lmcollapse.run.manifests import read_manifest


def all_columns(rows: list[dict]) -> list[str]:
    """The columns present in ``rows``, in catalogue order (identity, metrics, run facts)."""
    present = {key for row in rows for key in row}
    ordered = [c for c in COLUMNS if c in present]
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
    _write_if_changed(run.metrics_json, canonical_json(nan_as_null({**header, "columns": columns, "generations": rows}), indent=2) + "\n")


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


def generation_label(row: dict) -> str:
    """A generation's label in tables: its number, and its model family where a chain gave it one."""
    family = row.get("family")
    return f"{row['generation']} ({family})" if family else str(row["generation"])


def format_table(rows: list[dict], reference: dict | None = None, columns: list[str] | None = None) -> str:
    """A fixed-width table: reference rows (base, human) first, then one row per generation."""
    present = {k for row in rows for k in row} | {k for r in (reference or {}).values() for k in r}
    columns = [c for c in (columns or shown_in(TERMINAL)) if c in present]
    table = [["generation"] + columns]
    for label, values in (reference or {}).items():
        table.append([label] + [_fmt(c, values.get(c)) for c in columns])
    for row in rows:
        table.append([generation_label(row)] + [_fmt(c, row.get(c)) for c in columns])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        decimals = COLUMNS[column].decimals if column in COLUMNS else 3
        return f"{value:.{decimals}f}"
    return str(value)


def collect_rows(run: RunDir, checks: list | None = None) -> list[dict]:
    """The metrics rows of the complete generations, in order; a stale generation (built on a
    lineage that no longer exists) is left out, as is a pending one (what it was built on is being
    rebuilt); an edited manifest is an error. ``checks``: the run's ``verify_run``, where the caller
    has it."""
    left_out = off_lineage(verify_run(run, quick=True) if checks is None else checks)
    return [read_manifest(g.manifest)["metrics"] for g in run.complete_generations() if g.name not in left_out]


def reference_rows(run: RunDir) -> dict[str, dict]:
    reference = {}
    if run.base_eval.is_file():
        reference["base"] = {k: v for k, v in read_manifest(run.base_eval).items() if k.startswith("ppl_") or k == "bits_per_byte"}
    if run.human_manifest.is_file():
        reference["human"] = dict(read_manifest(run.human_manifest).get("text_metrics", {}))
        if run.human_mauve.is_file():  # human text against human text: the ceiling of a corpus's mauve
            reference["human"]["mauve"] = read_manifest(run.human_mauve)["mauve"]
    return reference


def refresh_metrics(run: RunDir, config: PipelineConfig) -> None:
    header = {"run": run.name, "pipeline": config.name, "config_fingerprint": config.fingerprint(),
              "seed": config.seed, "reference": reference_rows(run)}
    write_metrics(run, collect_rows(run), header)


def summary_table(run: RunDir) -> str:
    return format_table(collect_rows(run), reference_rows(run))
