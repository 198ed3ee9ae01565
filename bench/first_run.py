"""The first ``make run`` on a fresh clone, and the runs after it: wall time and peak memory.

A fresh clone of the repository's HEAD in a temporary folder, then, there:

1. ``make install`` (a new virtual environment; pip's own cache makes it quicker than a first
   install on a new machine, so the figure is a lower bound for that);
2. ``make run`` with an empty pretrained-model cache: pretraining the tiny base, then five
   generations (the target: install and this together within 10 minutes on two cores);
3. ``make run`` again into another run folder: the base comes from the cache (what every later
   run, seed and variant costs).

It also compares the table the first ``make run`` printed with the README's, every column but
``train_seconds`` (a wall time): on the machine the README was measured on they are equal.

    python -m bench.first_run        # or: make bench-first-run (about 10 minutes; not in make bench)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import machine, print_table, require_corpus

REPO = Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def table_rows(text: str) -> list[list[str]]:
    """The rows of the last `make run` table in ``text``, without the train_seconds column."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("generation  ppl_blocks"))
    header = lines[start].split()
    rows = []
    for line in lines[start:]:
        cells = line.split()
        if not cells or (rows and len(cells) != len(header)):
            break
        rows.append([c for c, name in zip(cells, header) if name != "train_seconds"])
    return rows


def readme_agreement(printed: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ours, theirs = table_rows(printed), table_rows(readme.split("`make run` ends with a table like this one")[1])
    if ours == theirs:
        return "the printed table equals the README's (every column but train_seconds)"
    differing = [" ".join(row[:1]) for row, other in zip(ours, theirs) if row != other]
    return f"the printed table differs from the README's in the rows of: {', '.join(differing) or 'its shape'}"


def main() -> None:
    require_corpus()
    with tempfile.TemporaryDirectory() as scratch:
        clone, cache = Path(scratch) / "lmcollapse", Path(scratch) / "cache"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        env = {**os.environ, "LMCOLLAPSE_CACHE_DIR": str(cache)}
        install, _ = timed(["make", "install"], clone, env)
        first, printed = timed(["make", "run"], clone, env)
        later, _ = timed(["make", "run", "RUN=runs/tiny-again"], clone, env)
        pretrained = json.loads(next((cache / "pretrained").glob("*/manifest.json")).read_text())
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("the first make run on a fresh clone (pipelines/tiny.yaml, 5 generations), and a later one")
    print(f"machine: {machine()}")
    print_table(["step", "wall s"], [
        ["make install (fresh .venv; pip cache warm)", f"{install:.0f}"],
        [f"make run, empty cache (pretraining: {pretrained['seconds']:.0f} s)", f"{first:.0f}"],
        ["install + first make run", f"{install + first:.0f}"],
        ["make run again, base cached", f"{later:.0f}"]])
    print(f"peak resident memory of any step: {peak:,.0f} MB")
    print(readme_agreement(printed))


if __name__ == "__main__":
    main()
