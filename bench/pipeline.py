"""The whole tiny pipeline: wall time per generation, peak memory, and the cost model.

``lmcollapse run`` of pipelines/tiny.yaml for one generation at 256, 512 and 1,024 training blocks,
each in a fresh process: wall time, the one-off set-up (tokenizer, base model, human blocks,
zero-shot perplexity), the generation's train / generate / evaluate seconds, and peak resident
memory. A least-squares line through (blocks, seconds per generation) gives the marginal cost
per 1,000 blocks; R² near 1 means time grows linearly with the corpus.

The runs use the cached pretrained base of pipelines/tiny.yaml when there is one. Without it,
they use a smaller base pretrained here on QUICK_BASE_BLOCKS blocks (half a minute instead of
three; cached too, under its own key), and say so: the base's weights do not change what a
generation costs, and ``make bench`` stays under ten minutes whatever the cache holds.

    python -m bench.pipeline     # or: make bench
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import machine, print_table, require_corpus

REPO = Path(__file__).resolve().parent.parent
SIZES = (256, 512, 1024)
QUICK_BASE_BLOCKS = 2048
# Runs the command line in this process, then reports its own peak memory.
WRAPPER = """
import resource, runpy, sys
sys.argv = ["lmcollapse"] + sys.argv[1:]
try:
    runpy.run_module("lmcollapse", run_name="__main__")
except SystemExit as stop:
    if stop.code:
        raise
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def base_settings() -> tuple[list[str], str]:
    """The overrides the runs use for their base, and a line saying which base that is."""
    from lmcollapse.config import load_config
    from lmcollapse.stages.base_cache import locate_entry

    entry = locate_entry(load_config(REPO / "pipelines" / "tiny.yaml"))
    if entry.is_complete:
        return [], f"base: the cached base of pipelines/tiny.yaml ({entry.root})"
    return ([f"pretrain.max_blocks={QUICK_BASE_BLOCKS}", "pretrain.warmup_steps=10"],
            f"base: not cached, so a smaller one pretrained here on {QUICK_BASE_BLOCKS:,} blocks "
            "(`make pretrain` caches the full base; a generation costs the same either way)")


def run_size(blocks: int, folder: Path, base: list[str]) -> dict:
    import time

    run = folder / f"tiny-{blocks}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, "-q", "run", "--pipeline", str(REPO / "pipelines" / "tiny.yaml"),
                           "--run", str(run), "--no-progress", "--set", f"data.max_train_blocks={blocks}", "generations=1", *base],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the tiny pipeline failed at {blocks} blocks:\n{done.stderr[-3000:]}")
    peak = int(done.stdout.split("PEAK_RSS_KB")[-1].split()[0]) / 1024
    timings = json.loads((run / "generation-00" / "manifest.json").read_text())["timings"]
    generation = sum(timings.values())
    return {"blocks": blocks, "wall": wall, "setup": wall - generation, "generation": generation,
            **timings, "peak_rss_mb": peak}


def main() -> None:
    require_corpus()
    base, which = base_settings()
    with tempfile.TemporaryDirectory() as scratch:
        results = [run_size(n, Path(scratch), base) for n in SIZES]
    print("the tiny pipeline (pipelines/tiny.yaml), one generation, at three training-set sizes")
    print(f"machine: {machine()}")
    print(which)
    print_table(["train blocks", "wall s", "set-up s", "generation s", "train s", "generate s", "eval s", "peak RSS MB"],
                [[f"{r['blocks']:,}", f"{r['wall']:.1f}", f"{r['setup']:.1f}", f"{r['generation']:.1f}",
                  f"{r['train_seconds']:.1f}", f"{r['generate_seconds']:.1f}", f"{r['eval_seconds']:.1f}",
                  f"{r['peak_rss_mb']:,.0f}"] for r in results])
    x = np.array([r["blocks"] for r in results], dtype=float)
    y = np.array([r["generation"] for r in results])
    slope, intercept = np.polyfit(x, y, 1)
    fitted = slope * x + intercept
    r2 = 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    print(f"cost model: seconds per generation = {intercept:.1f} + {slope * 1000:.1f} per 1,000 training blocks "
          f"(R² = {r2:.4f}); the intercept is evaluation on the fixed held-out blocks")


if __name__ == "__main__":
    main()
