"""Run every benchmark in bench/ (``make bench``), one subprocess each, and print their tables.

    python -m bench.run_all              # all
    python -m bench.run_all self_bleu    # some
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ASSETS_ENV

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["self_bleu", "train", "generate", "evaluation", "pipeline"]


def main(names: list[str]) -> int:
    failed = []
    # One tokenizer and one tokenization of the tiny pipeline's splits for every benchmark process.
    with tempfile.TemporaryDirectory(prefix="lmcollapse-bench-assets-") as assets:
        for name in names or BENCHMARKS:
            code = run_one(name, {**os.environ, ASSETS_ENV: assets})
            if code:
                failed.append(name)
    return 1 if failed else 0


def run_one(name: str, env: dict) -> int:
    print(f"\n=== bench/{name}.py", flush=True)
    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent, env=env)
    print(f"=== {name}: {time.perf_counter() - started:.0f} s{'' if code == 0 else f', FAILED ({code})'}", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
