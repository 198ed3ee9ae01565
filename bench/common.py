"""Shared pieces of the benchmarks: the machine line, the corpus, and table printing."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


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


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_assets(train_blocks: int = 1024, seed: int = 0):
    """The tiny pipeline's human data without a run directory, as its base/human stage reads it
    (pipelines/tiny.yaml's splits, block size and training subset), tokenized by a 4,096-token BPE
    tokenizer trained on the train split: that many 64-token training blocks, and the held-out
    split as one token stream."""
    from lmcollapse import corpus
    from lmcollapse.base_and_human import human_text, training_subset
    from lmcollapse.config import load_config
    from lmcollapse.modeling import train_bpe_tokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = load_config(REPO / "pipelines" / "tiny.yaml", [f"data.max_train_blocks={train_blocks}", f"data.subset_seed={seed}"])
    _, _, train_lines, test_lines = human_text(config)
    tokenizer = train_bpe_tokenizer(train_lines["text"], 4096, 256)
    blocks = corpus.cut_into_blocks(corpus.tokenize_lines(train_lines, tokenizer), config.data.block_size)
    return tokenizer, blocks[training_subset(config, len(blocks))], corpus.tokenize_lines(test_lines, tokenizer)


def tiny_model(tokenizer, preset: str = "tiny-opt", seed: int = 0):
    from lmcollapse.config import ModelConfig
    from lmcollapse.modeling import build_preset_model

    return build_preset_model(ModelConfig(name=preset), tokenizer, seed)


def run_variants(script: Path, variants: list[str], timeout: int = 900) -> list[dict]:
    """Run ``script --variant V`` for each V in a fresh process; each prints one JSON line last."""
    import json
    import subprocess
    import sys

    results = []
    for variant in variants:
        done = subprocess.run([sys.executable, str(script), "--variant", variant], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if done.returncode != 0:
            raise SystemExit(f"{script.name} --variant {variant} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def require_corpus() -> None:
    if wikitext_words() is None:
        raise SystemExit("the benchmarks read WikiText-2: set LMCOLLAPSE_DATA_DIR to the folder holding wikitext-2-raw/")
