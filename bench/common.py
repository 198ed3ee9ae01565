"""Shared pieces of the benchmarks: the machine line, the corpus, and table printing."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {device}"


def wikitext_words() -> list[str] | None:
    """Whitespace words of the raw WikiText-2 validation + test splits, if LMCOLLAPSE_DATA_DIR has them."""
    root = Path(os.environ.get("LMCOLLAPSE_DATA_DIR", "data")) / "wikitext-2-raw"
    files = [root / "wiki.valid.raw", root / "wiki.test.raw"]
    if not all(f.is_file() for f in files):
        return None
    return [w for f in files for w in f.read_text(encoding="utf-8").split()]


def word_samples(count: int, length: int, seed: int = 0) -> tuple[list[list[str]], str]:
    """``count`` samples of ``length`` words: random windows of WikiText-2 (overlapping, like a
    collapsing corpus), or Zipf-distributed words when the corpus is not available."""
    rng = np.random.default_rng(seed)
    words = wikitext_words()
    if words is not None:
        starts = rng.integers(0, len(words) - length, size=count)
        return [words[s:s + length] for s in starts], "random windows of WikiText-2 (raw valid+test)"
    ranks = rng.zipf(1.2, size=(count, length)) % 50_000
    return [[f"w{r}" for r in row] for row in ranks], "Zipf(1.2) words over a 50k vocabulary"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
