"""Run every benchmark in bench/ (``make bench``), one subprocess each, and print their tables.

    python -m bench.run_all              # all
    python -m bench.run_all self_bleu    # some
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["self_bleu", "train", "generate", "evaluation", "pipeline"]


def main(names: list[str]) -> int:
    failed = []
    for name in names or BENCHMARKS:
        print(f"\n=== bench/{name}.py", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent)
        print(f"=== {name}: {time.perf_counter() - started:.0f} s{'' if code == 0 else f', FAILED ({code})'}", flush=True)
        if code:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
