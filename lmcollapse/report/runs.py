"""The runs a report covers: found below a folder, grouped by config (every result-affecting
setting but the seed), and aggregated over seeds (mean ± sd, ddof = 1).

    groups = group_runs(discover_runs(Path("runs/compare")))
    group_table(groups[0], ["ppl_blocks"])   # [{generation, ppl_blocks: (mean, sd, seeds)}, ...]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmcollapse.config import PipelineConfig, load_config
from lmcollapse.errors import LmcollapseError
from lmcollapse.metrics import REGISTRY
from lmcollapse.metrics.table import collect_rows, reference_rows
from lmcollapse.run.commands import build_command, start_command
from lmcollapse.run.layout import RunDir

MAX_DEPTH = 3


log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    run: RunDir
    config: PipelineConfig
    rows: list[dict]
    reference: dict

    @property
    def generations(self) -> list[int]:
        return [row["generation"] for row in self.rows]


@dataclass
class Group:
    """Runs that differ only in their seed."""

    label: str
    runs: list[RunRecord] = field(default_factory=list)
    left_out: list[tuple[RunRecord, RunRecord]] = field(default_factory=list)
    """(left out, kept): runs with the same config and seed as a counted one."""

    @property
    def config(self) -> PipelineConfig:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int]:
        return sorted(r.config.seed for r in self.runs)


def discover_runs(root: Path, only: list[Path] | None = None) -> list[RunRecord]:
    """The run at ``root``, or every run below it (a folder of seeds, regimes, ...); with ``only``,
    those of them (a study's runs, not whatever else its folder holds)."""
    root = Path(root)
    if not root.exists():
        raise LmcollapseError(f"{root} does not exist: pass RUN= a run directory or a folder of runs")
    if not root.is_dir():
        raise LmcollapseError(f"RUN={root} is a file, not a run folder: pass RUN= a run directory or a folder of runs")
    found = [root] if RunDir(root).pipeline_file.is_file() else _runs_below(root, MAX_DEPTH)
    if only is not None:
        wanted = {Path(path).resolve() for path in only}
        found = [path for path in found if Path(path).resolve() in wanted]
    records = [_record(RunDir(path)) for path in found]
    records = [r for r in records if r.rows]
    if not records:
        first = build_command(found[0], 0) if found else start_command(root)
        raise LmcollapseError(f"no complete generation under {root}: build one first, e.g. {first}")
    return records


def _runs_below(folder: Path, depth: int) -> list[Path]:
    if depth == 0:
        return []
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if RunDir(child).pipeline_file.is_file():
            found.append(child)
        elif child.name != "report":
            found.extend(_runs_below(child, depth - 1))
    return found


def _record(run: RunDir) -> RunRecord:
    from lmcollapse.run.integrity import DAMAGED, OFF_LINEAGE, verify_run

    # Everything a report reads (manifests, training logs, tails) is checked against its manifest
    # first; stale and pending generations are left out of the rows by collect_rows, and said so.
    checks = verify_run(run)
    damaged = [check for check in checks if check.state == DAMAGED]
    if damaged:
        raise LmcollapseError(damaged[0].problem)
    left = [check for check in checks if check.state in OFF_LINEAGE and check.name.startswith("generation-")]
    if left:
        last = max(g.index for g in run.generations_on_disk())
        log.warning("%s: %s left out of the report (%s: %s); %s settles %s", run.root,
                    ", ".join(c.name for c in left), left[0].state, left[0].problem, build_command(run.root, last),
                    "it" if len(left) == 1 else "them")
    return RunRecord(run, load_config(run.pipeline_file), collect_rows(run, checks), reference_rows(run))


def group_runs(records: list[RunRecord]) -> list[Group]:
    """Runs grouped by every result-affecting setting but the seed (the config fingerprint less
    the seed); a run with the same seed as one already in its group is left out of it, once."""
    groups: dict[str, Group] = {}
    for record in records:
        group = groups.setdefault(record.config.fingerprint(ignoring=("seed",)), Group(record.config.name))
        twin = next((r for r in group.runs if r.config.seed == record.config.seed), None)
        if twin is None:
            group.runs.append(record)
        elif len(record.rows) > len(twin.rows):  # keep the more complete one
            group.runs[group.runs.index(twin)] = record
            group.left_out.append((twin, record))
        else:
            group.left_out.append((record, twin))
    labelled = list(groups.values())
    names = [g.label for g in labelled]
    for group in labelled:
        if names.count(group.label) > 1:  # same pipeline name, other settings: name the runs
            group.label = f"{group.label} ({', '.join(r.run.name for r in group.runs)})"
        group.runs.sort(key=lambda r: r.config.seed)
    for warning in duplicate_warnings(labelled):
        log.warning("%s", warning)
    return labelled


def duplicate_warnings(groups: list[Group]) -> list[str]:
    """One line per run left out of its group for repeating another run's config and seed."""
    return [f"{dropped.run.root} and {kept.run.root} are the same config and seed (seed {kept.config.seed}, "
            f"config fingerprint {kept.config.fingerprint()[:12]}): counted once, {dropped.run.root} left out of "
            "the mean ± std; delete or move one of them, or rerun it with another seed"
            for group in groups for dropped, kept in group.left_out]


def aggregate(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof = 1; 0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return mean, std, len(finite)


def group_table(group: Group, metrics: list[str]) -> list[dict]:
    """Per generation: {"generation", "seeds", metric: (mean, std, n)} over the group's seeds."""
    generations = sorted({g for record in group.runs for g in record.generations})
    table = []
    for generation in generations:
        rows = [row for record in group.runs for row in record.rows if row["generation"] == generation]
        entry: dict = {"generation": generation, "seeds": len(rows)}
        families = {row["family"] for row in rows if row.get("family")}
        if families:  # model.chain: the family the generation was trained in (one per config)
            entry["family"] = " / ".join(sorted(families))
        for metric in metrics:
            entry[metric] = aggregate([row.get(metric) for row in rows])
        table.append(entry)
    return table


def present_metrics(groups: list[Group]) -> list[str]:
    present = {k for g in groups for r in g.runs for row in r.rows for k in row}
    return [m for m in REGISTRY if m in present]
