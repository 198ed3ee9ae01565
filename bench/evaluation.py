"""Evaluation throughput and memory: perplexity tokens/s, and memory against held-out size.

* speed: scored tokens per second of ``ppl_blocks`` (64-token blocks) and ``ppl_sliding``
  (window 64, stride 32) on the first 1,000 blocks of the WikiText-2 test split, against the loop
  of the Hugging Face perplexity guide (one window per forward pass) for the sliding window;
* memory: both methods streamed from a Parquet file of 1,000, 3,000 and all test blocks, each in
  a fresh process: peak resident memory should not grow with the held-out size.

    python -m bench.evaluation     # or: make bench
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import (
    forward_flops,
    human_records,
    machine,
    matmul_peak,
    model_shape,
    of_peak,
    peak_rss_mb,
    print_table,
    require_corpus,
    run_variants,
    start_as_a_command,
    tiny_assets,
    tiny_model,
)

SPEED_BLOCKS = 1000
WINDOW, STRIDE, BATCH = 64, 32, 64


def setup(blocks: int | None):
    import torch

    tokenizer, _, test = tiny_assets(16)
    model = tiny_model(tokenizer).eval()
    torch.set_grad_enabled(False)
    usable = (len(test) // 64) * 64 if blocks is None else blocks * 64
    return model, test[:usable]


def forwarded_flops(model, tokens: int, method: str) -> float:
    """Forward FLOPs the method runs over ``tokens`` held-out tokens: every block once, or every
    window of WINDOW tokens at STRIDE (each token then goes through the model about twice)."""
    windows = -(-max(tokens - WINDOW, 0) // STRIDE) + 1
    forwarded = tokens if method == "blocks" else windows * WINDOW
    return forward_flops(model_shape(model), forwarded, WINDOW / 2)


def variant_speed(method: str) -> dict:
    from lmcollapse.metrics.perplexities import perplexity_blocks, perplexity_sliding

    start_as_a_command()
    model, tokens = setup(SPEED_BLOCKS)
    started = time.perf_counter()
    if method == "blocks":
        result = perplexity_blocks(model, tokens, 64, BATCH)
    else:
        result = perplexity_sliding(model, tokens, WINDOW, STRIDE, BATCH)
    seconds = time.perf_counter() - started
    return {"variant": f"lmcollapse {method}", "tokens": result.tokens, "seconds": seconds,
            "tokens_per_second": result.tokens / seconds, "perplexity": result.perplexity, "peak_rss_mb": peak_rss_mb(),
            "flops": forwarded_flops(model, len(tokens), method)}


def variant_guide() -> dict:
    """The Hugging Face perplexity guide's loop: one window per forward, labels masked with -100."""
    import math

    import torch

    model, tokens = setup(SPEED_BLOCKS)
    ids = torch.as_tensor(tokens)[None]
    nll_sum, n_tokens, previous_end = 0.0, 0, 0
    started = time.perf_counter()
    for begin in range(0, ids.size(1), STRIDE):
        end = min(begin + WINDOW, ids.size(1))
        target_length = end - previous_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-target_length] = -100
        loss = model(input_ids, labels=target_ids).loss
        valid = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * valid
        n_tokens += valid
        previous_end = end
        if end == ids.size(1):
            break
    seconds = time.perf_counter() - started
    return {"variant": "HF guide loop, sliding", "tokens": n_tokens, "seconds": seconds,
            "tokens_per_second": n_tokens / seconds, "perplexity": math.exp(nll_sum / n_tokens), "peak_rss_mb": peak_rss_mb(),
            "flops": forwarded_flops(model, len(tokens), "sliding")}


def write_heldout_files(folder: str) -> list[str]:
    """The first 1,000 and 3,000 test blocks and all of them, each as a records file (the memory
    variants' inputs; written here, not timed)."""
    import datasets

    from lmcollapse.data.records import write_records

    datasets.disable_progress_bars()  # this process prints the table
    _, _, test = tiny_assets(16)
    paths = []
    for size in ("1000", "3000", "all"):
        rows = test[: (len(test) // 64) * 64].reshape(-1, 64)[: None if size == "all" else int(size)]
        path = f"{folder}/{size}.parquet"
        write_records(human_records(rows), Path(path))
        paths.append(path)
    return paths


def variant_memory(path: str) -> dict:
    """Both perplexities streamed from the file: what the pipeline does with the held-out split."""
    from lmcollapse.metrics.perplexities import TokenStream, perplexity_blocks, perplexity_sliding

    start_as_a_command()  # the pipeline's evaluation runs under the command line's settings
    model, _ = setup(16)
    before = peak_rss_mb()
    started = time.perf_counter()
    stream = TokenStream.from_parquet(path)
    a = perplexity_blocks(model, stream, 64, BATCH)
    b = perplexity_sliding(model, stream, WINDOW, STRIDE, BATCH)
    return {"blocks": stream.length // 64, "tokens": a.tokens + b.tokens, "seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(), "rss_before_eval_mb": before}


def main() -> None:
    require_corpus()
    speed = run_variants(Path(__file__), ["speed:blocks", "speed:sliding", "guide"])
    with tempfile.TemporaryDirectory() as scratch:
        files = write_heldout_files(scratch)
        memory = run_variants(Path(__file__), [f"memory:{f}" for f in files])
    peak, how = matmul_peak()
    print(f"evaluation: tiny-opt, batch {BATCH}; blocks of 64; sliding window {WINDOW}, stride {STRIDE}")
    print(f"machine: {machine()}; matmul peak {peak / 1e9:,.0f} GFLOP/s ({how})")
    guide = speed[2]["tokens_per_second"]
    print_table(["variant", "scored tokens", "seconds", "tokens/s", "achieved (of peak)", "ratio to guide", "perplexity"],
                [[r["variant"], f"{r['tokens']:,}", f"{r['seconds']:.1f}", f"{r['tokens_per_second']:,.0f}",
                  of_peak(r["flops"] / r["seconds"], peak), f"{r['tokens_per_second'] / guide:.1f}",
                  f"{r['perplexity']:.2f}"] for r in speed])
    print("achieved: forward FLOPs run (2N + 4 L d context per forwarded token) per second")
    print()
    print_table(["held-out size", "scored tokens (both methods)", "seconds", "peak RSS MB"],
                [[f"{r['blocks']:,} blocks", f"{r['tokens']:,}", f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:,.0f}"]
                 for r in memory])
    growth = memory[-1]["peak_rss_mb"] - memory[0]["peak_rss_mb"]
    print(f"memory growth from {memory[0]['blocks']:,} to {memory[-1]['blocks']:,} blocks: {growth:+.0f} MB "
          f"(streamed evaluation: it should stay near zero)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant")
    args = parser.parse_args()
    if args.variant:
        kind, _, value = args.variant.partition(":")
        if kind == "speed":
            out = variant_speed(value)
        elif kind == "guide":
            out = variant_guide()
        else:
            out = variant_memory(value)
        print(json.dumps(out))
    else:
        main()
