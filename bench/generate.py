"""Generation throughput: lmcollapse's synthetic-corpus stage against the reference code's loop.

The reference code (Shumailov et al.'s curse_recurse) writes the corpus by iterating its training
DataLoader (batches of 128), calling ``model.generate`` on each batch, slicing off the prompt and
building one dict per sample. Both sides here use the same tiny-opt model, the same prompts and
the same decoding settings, and both keep the results; ours also writes Parquet shards with
provenance and sha256. Three cases:

* beam: the paper's decoding (5 beams, repetition penalty 3.0, exactly 64 new tokens);
* sample: the tiny pipeline's decoding (ancestral sampling, 64 new tokens);
* varlen: sampling from prompts of 8 to 64 tokens, as later generations see when text stops at
  end-of-text; the reference pads each batch to its longest prompt in arrival order, ours sorts
  prompts by length first (length bucketing).

Ours also runs with the inverse-CDF sampler (``generate.sampler: inverse-cdf``: one uniform variate
per sequence and step instead of torch.multinomial's one per vocabulary entry) and with a static KV
cache. Each variant runs in its own process.

    python bench/generate.py     # or: make bench
    python bench/generate.py --only reference:beam ours:beam
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    forward_flops,
    machine,
    matmul_peak,
    model_shape,
    of_peak,
    peak_rss_mb,
    print_table,
    require_corpus,
    run_variants,
    tiny_assets,
    tiny_model,
)

BATCH = 128
NEW_TOKENS = 64
CASES = {
    "beam": dict(num_beams=5, do_sample=False, repetition_penalty=3.0),
    "sample": dict(num_beams=1, do_sample=True, repetition_penalty=1.0),
    "varlen": dict(num_beams=1, do_sample=True, repetition_penalty=1.0),
}


def prompts_for(case: str, count: int):
    import numpy as np

    tokenizer, blocks, _ = tiny_assets(count)
    prompts = [b for b in blocks]
    if case == "varlen":
        lengths = np.random.default_rng(0).integers(8, 65, size=len(prompts))
        prompts = [p[-n:] for p, n in zip(prompts, lengths)]
    return tokenizer, prompts


def useful_flops(model, prompts, case: str) -> float:
    """The forward FLOPs the decoding needs, padding aside: each of the prompt's beams prefilled
    (every beam holds a copy of the prompt, as transformers' beam search does), then NEW_TOKENS
    steps of one token per beam attending to the prompt and what came before."""
    shape = model_shape(model)
    beams = CASES[case]["num_beams"]
    return sum(beams * (forward_flops(shape, len(p), len(p) / 2) + forward_flops(shape, NEW_TOKENS, len(p) + NEW_TOKENS / 2))
               for p in prompts)


def count_for(case: str) -> int:
    import torch

    return 2048 if torch.cuda.is_available() else (256 if case == "beam" else 512)


def variant_ours(case: str, static: bool = False, icdf: bool = False, probe: bool = False) -> dict:
    import torch

    from lmcollapse.config import GenerateConfig, PipelineConfig
    from lmcollapse.generate import write_synthetic_corpus
    from lmcollapse.pipeline import make_accelerator
    from lmcollapse.records import HUMAN, make_records

    tokenizer, prompts = prompts_for(case, count_for(case))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_model(tokenizer, "opt-125m" if device == "cuda" else "tiny-opt").to(device).eval()
    settings = CASES[case]
    config = GenerateConfig(**settings, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS, batch_size=BATCH,
                            shard_size=4096, cache_implementation="static" if static else "dynamic",
                            sampler="inverse-cdf" if icdf else "multinomial", batch_probe=probe)
    records = make_records({"id": [f"p{i}" for i in range(len(prompts))], "source": [HUMAN] * len(prompts),
                            "generation": [None] * len(prompts), "parent": [None] * len(prompts),
                            "model": [None] * len(prompts), "input_ids": [p.tolist() for p in prompts],
                            "text": [""] * len(prompts)})
    accelerator = make_accelerator(PipelineConfig())
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        shards = write_synthetic_corpus(model, tokenizer, records, config, seed=0, generation=0, model_label="bench",
                                        out_dir=Path(scratch), accelerator=accelerator, progress=False)
        seconds = time.perf_counter() - started
    new_tokens = sum(s["new_tokens"] for s in shards)
    label = "lmcollapse stage" + (" + inverse-cdf sampler" if icdf else "") + (" + static cache" if static else "") \
        + (" + batch probe" if probe else "")
    return {"variant": label, "case": case, "prompts": len(prompts),
            "seconds": seconds, "tokens_per_second": new_tokens / seconds, "peak_rss_mb": peak_rss_mb(),
            "flops": useful_flops(model, prompts, case), **_gpu_memory()}


def variant_reference(case: str) -> dict:
    import torch

    tokenizer, prompts = prompts_for(case, count_for(case))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_model(tokenizer, "opt-125m" if device == "cuda" else "tiny-opt").to(device).eval()
    settings = dict(CASES[case], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    if settings["do_sample"]:
        settings.update(top_k=0, temperature=1.0)
    torch.manual_seed(0)
    kept = []
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(prompts), BATCH):  # the reference's DataLoader order and batch size
            batch = prompts[start:start + BATCH]
            longest = max(len(p) for p in batch)
            input_ids = torch.full((len(batch), longest), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for j, p in enumerate(batch):  # left padding, as any correct batched decoder-only call needs
                input_ids[j, longest - len(p):] = torch.as_tensor(p)
                attention_mask[j, longest - len(p):] = 1
            outputs = model.generate(input_ids.to(device), attention_mask=attention_mask.to(device), **settings)
            preds = outputs[:, longest:]
            for j in range(len(batch)):  # one dict per sample, as the reference builds its dataset
                kept.append({"input_ids": preds[j, :].cpu(), "attention_mask": attention_mask[j, :], "labels": preds[j, :].cpu()})
    seconds = time.perf_counter() - started
    return {"variant": "reference loop", "case": case, "prompts": len(prompts), "seconds": seconds,
            "tokens_per_second": len(kept) * NEW_TOKENS / seconds, "peak_rss_mb": peak_rss_mb(),
            "flops": useful_flops(model, prompts, case), **_gpu_memory()}


def _gpu_memory() -> dict:
    import torch

    return {"gpu_peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9} if torch.cuda.is_available() else {}


VARIANTS = [f"{side}:{case}" for case in CASES for side in ("ours", "reference")] + [
    "ours+icdf:sample", "ours+icdf:varlen", "ours+static:beam", "ours+static:sample",
    "ours+icdf+static:sample", "ours+icdf+static+probe:sample"]


def main(variants: list[str]) -> None:
    require_corpus()
    results = run_variants(Path(__file__), variants)
    peak, how = matmul_peak()
    print(f"generation: tiny-opt (opt-125m shape on a GPU), {NEW_TOKENS} new tokens per prompt, batches of {BATCH}")
    print(f"machine: {machine()}; matmul peak {peak / 1e9:,.0f} GFLOP/s ({how})")
    reference = {r["case"]: r for r in results if r["variant"] == "reference loop"}
    rows = [[r["case"], r["variant"], r["prompts"], f"{r['seconds']:.1f}", f"{r['tokens_per_second']:,.0f}",
             of_peak(r["flops"] / r["seconds"], peak), f"{r['peak_rss_mb']:,.0f}",
             f"{r['tokens_per_second'] / reference[r['case']]['tokens_per_second']:.2f}"]
            for r in results]
    print_table(["case", "variant", "prompts", "seconds", "new tokens/s", "achieved (of peak)", "peak RSS MB", "ratio"], rows)
    print("ratio: tokens per second over the reference loop's, same case (ours also writes Parquet shards)")
    print("achieved: the decoding's useful forward FLOPs (2N + 4 L d context per token, every beam, no padding) per second")
    print("targets: sampling >= 3x and beam search >= 1.5x the reference loop")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=VARIANTS,
                        help="these variants only (each case's reference loop must be among them)")
    args = parser.parse_args()
    if args.variant:
        side, case = args.variant.split(":")
        if side == "reference":
            print(json.dumps(variant_reference(case)))
        else:
            print(json.dumps(variant_ours(case, static="+static" in side, icdf="+icdf" in side, probe="+probe" in side)))
    else:
        main(args.only)
