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


ASSETS_ENV = "BENCH_ASSETS"


def tiny_assets(train_blocks: int = 1024, seed: int = 0):
    """The tiny pipeline's human data without a run directory, as its base/human stage reads it
    (pipelines/tiny.yaml's splits, block size and training subset), tokenized by a 4,096-token BPE
    tokenizer trained on the train split: that many 64-token training blocks, and the held-out
    split as one token stream.

    With ``BENCH_ASSETS`` naming a folder (``make bench`` sets one for its run), the tokenizer and
    the tokenized splits are made by the first benchmark process that needs them and read back by
    every later one: training the tokenizer and tokenizing took about 4 s of each process."""
    from lmcollapse.config import load_config
    from lmcollapse.stages.human import training_subset

    config = load_config(REPO / "pipelines" / "tiny.yaml", [f"data.max_train_blocks={train_blocks}", f"data.subset_seed={seed}"])
    cache = os.environ.get(ASSETS_ENV)
    folder = Path(cache) / "tiny" if cache else None
    if folder is not None and folder.is_dir():
        from lmcollapse.engine.modeling import load_tokenizer

        tokenizer = load_tokenizer(folder)
        blocks, heldout = np.load(folder / "train-blocks.npy"), np.load(folder / "heldout.npy")
    else:
        tokenizer, blocks, heldout = _tokenized_splits(config)
        if folder is not None:
            _save_assets(folder, tokenizer, blocks, heldout)
    return tokenizer, blocks[training_subset(config, len(blocks))], heldout


def _tokenized_splits(config):
    from lmcollapse.data.corpus import CorpusPlan
    from lmcollapse.data.read import cut_into_blocks, tokenize_lines
    from lmcollapse.engine.modeling import train_bpe_tokenizer
    from lmcollapse.stages.human import HumanText

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    text = HumanText.read(CorpusPlan(config))
    tokenizer = train_bpe_tokenizer(text.train["text"], 4096, 256)
    blocks = cut_into_blocks(tokenize_lines(text.train, tokenizer), config.data.block_size)
    return tokenizer, blocks, tokenize_lines(text.heldout, tokenizer)


def _save_assets(folder: Path, tokenizer, blocks, heldout) -> None:
    """Written beside ``folder`` and renamed into place: two processes of a ``+2proc`` variant
    may both get here, and a reader never sees half a folder."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    tokenizer.save_pretrained(scratch)
    np.save(scratch / "train-blocks.npy", blocks)
    np.save(scratch / "heldout.npy", heldout)
    try:
        scratch.rename(folder)
    except OSError:  # another process was first: its folder holds the same assets
        shutil.rmtree(scratch, ignore_errors=True)


def human_records(rows, prefix: str = ""):
    """Human records holding token rows (a prompt or a held-out block each): what the pipeline's
    stages read, with no text and no parent."""
    from lmcollapse.data.records import HUMAN, make_records

    n = len(rows)
    return make_records({"id": [f"{prefix}{i}" for i in range(n)], "source": [HUMAN] * n, "generation": [None] * n,
                         "parent": [None] * n, "model": [None] * n, "input_ids": [list(map(int, r)) for r in rows],
                         "text": [""] * n})


def tiny_model(tokenizer, preset: str = "tiny-opt", seed: int = 0):
    from lmcollapse.config import ModelConfig
    from lmcollapse.engine.modeling import build_preset_model

    return build_preset_model(ModelConfig(name=preset), tokenizer, seed)


def run_variants(script: Path, variants: list[str], timeout: int = 900) -> list[dict]:
    """Run ``script --variant V`` for each V in a fresh process; each prints one JSON line last.

    A variant whose name holds ``+2proc`` runs as two processes (``accelerate launch``, gloo on a
    CPU), each with half of the machine's cores as threads, as a user runs a stage on both cores of
    a small machine; only the main process prints its result. ``BENCH_SCRATCH`` names an empty
    folder that all of a variant's processes share, removed afterwards."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    results = []
    for variant in variants:
        scratch = tempfile.mkdtemp(prefix="lmcollapse-bench-")
        module = ["-m", f"bench.{script.stem}", "--variant", variant]  # the bench package, from the repository
        command = [sys.executable, *module]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "BENCH_SCRATCH": scratch}
        if "+2proc" in variant:
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *module]
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if done.returncode != 0:
            raise SystemExit(f"{script.name} --variant {variant} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def start_as_a_command() -> None:
    """What every lmcollapse command does before it computes: keep freed memory
    (lmcollapse/engine/allocator.py) and start MKL's vector math on one thread
    (lmcollapse/engine/vector_math.py). Our side of a benchmark runs as the command line runs it,
    and an alternative "with the same allocator" does too."""
    from lmcollapse.engine.allocator import keep_freed_memory
    from lmcollapse.engine.vector_math import start_vector_math

    keep_freed_memory()
    start_vector_math()


def require_corpus() -> None:
    if wikitext_words() is None:
        raise SystemExit("the benchmarks read WikiText-2: set LMCOLLAPSE_DATA_DIR to the folder holding wikitext-2-raw/")


# ---------------------------------------------------------------------------- the limit

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def matmul_peak() -> tuple[float, str]:
    """The machine's matmul rate, FLOP/s, and how it was found: on a CPU the best of five fp32
    2048 x 2048 products at the default thread count (measured; what the stages compute in); on a
    GPU the vendor's dense bf16 peak (MFU's denominator), or a measured 8192-square bf16 product
    where the card is not in the table."""
    import time

    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        spec = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
        if spec:
            return spec, f"{name} dense bf16 peak (specification)"
        size, dtype, device = 8192, torch.bfloat16, "cuda"
    else:
        size, dtype, device = 2048, torch.float32, "cpu"
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(6):  # the first is a warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best, f"measured: best of 5 {str(dtype).removeprefix('torch.')} {size}x{size} matmuls, {torch.get_num_threads()} threads"


def model_shape(model) -> dict:
    """What the FLOP counts need: matmul parameters N (every weight but the position table; the
    tied embedding counts once, as the output layer), layers L and width d = heads x head size."""
    config = model.config
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if "embed_positions" not in n)
    return {"N": matmul_params, "L": config.num_hidden_layers, "d": config.hidden_size}


def forward_flops(shape: dict, tokens: float, context: float) -> float:
    """FLOPs of a forward pass over ``tokens`` tokens that each attend to ``context`` tokens on
    average: 2N per token for the matmuls, 4 L d context for the attention scores and values
    (the forward third of PaLM's 6N + 12 L H Q T, Chowdhery et al. 2022, appendix B)."""
    return tokens * (2 * shape["N"] + 4 * shape["L"] * shape["d"] * context)


def of_peak(flops_per_second: float, peak: float) -> str:
    return f"{flops_per_second / 1e9:,.1f} GFLOP/s = {flops_per_second / peak:.1%}"
