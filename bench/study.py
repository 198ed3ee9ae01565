"""A 2 x 2 study (two variants of the tiny pipeline, two seeds, two generations of 256 training
blocks) built as ``make compare`` built its runs, one after another with every core, and by the
local launcher with two slots of one thread each: the wall times and their ratio.

    python -m bench.study      # or: make bench-study (about 10 minutes on two cores)

The pretrained base is built (or found cached) first and is not timed: both ways reuse it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import REPO, machine, print_table, require_corpus

SETTINGS = {"data.max_train_blocks": 256, "train.epochs": 3}


def write_study(folder: Path, name: str) -> Path:
    # The small settings are a grid of one value each: every variant gets them.
    grid = {"train.learning_rate": [5.0e-4, 1.0e-3], **{key: [value] for key, value in SETTINGS.items()}}
    study = {"name": name, "pipelines": ["tiny"], "seeds": [0, 1], "generations": 2, "grid": grid,
             "root": str(folder / name), "resources": {"cpus": 1, "memory_gb": 3}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path


def lmc(*arguments: str, env: dict | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lmcollapse", "-q", *arguments], cwd=REPO, capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"lmcollapse {' '.join(arguments[:3])} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    require_corpus()
    from lmcollapse.studies import load_study

    with tempfile.TemporaryDirectory(prefix="lmcollapse-bench-study-") as scratch:
        folder = Path(scratch)
        sequential = load_study(write_study(folder, "sequential"))
        lmc("pretrain", "--pipeline", "tiny", "--no-progress")  # cached once, for both ways, not timed
        one_at_a_time = sum(lmc(*run.argv()) for run in sequential.runs())
        launched = lmc("study", "run", str(write_study(folder, "launched")), "--slots", "2")
    print("a 2 x 2 study of the tiny pipeline (two learning rates x two seeds, 2 generations of 256 blocks, 3 epochs)")
    print(f"machine: {machine()}")
    print_table(["how", "runs at once", "threads per run", "wall s", "ratio"],
                [["one run after another (make compare before studies)", "1", "all", f"{one_at_a_time:.1f}", "1.00"],
                 ["study run, local launcher, 2 slots", "2", "1", f"{launched:.1f}",
                  f"{one_at_a_time / launched:.2f}"]])
    print("On two cores a run with two threads already keeps both busy in its matrix products; two runs of one "
          "thread each also overlap what one run does serially (Python, data loading, tokenizing, writing Parquet, "
          "process start-up), which is where the gain comes from, and share the memory bandwidth, which limits it.")


if __name__ == "__main__":
    main()
