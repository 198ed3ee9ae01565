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
per sequence and step instead of torch.multinomial's one per vocabulary entry), and with the shipped
settings (that sampler, a static KV cache, eager attention, batch 256), in one process and in two. Each variant runs in its own
process. Ours runs as the command line runs it, with glibc told to keep freed memory
(lmcollapse/engine/allocator.py); the reference loop runs in a default process, as a researcher's script
does, and again with the same allocator setting ("reference loop, same allocator"), so the table
shows how much of the difference is the process's allocator and how much the stage.

On a CPU the sampling cases' stage with the settings before the fast path (multinomial draws, a
dynamic cache, SDPA) is left out by default; ``--only ours:sample reference:sample`` times it.

    python -m bench.generate     # or: make bench
    python -m bench.generate --only reference:beam ours:beam
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

    # On a CPU, 1,024 prompts sampled (4 batches of the shipped 256; 11 s or more a row on two cores)
    return 2048 if torch.cuda.is_available() else (512 if case == "beam" else 1024)


def variant_ours(case: str, static: bool = False, icdf: bool = False, probe: bool = False, processes: int = 1,
                 eager: bool = False, batch: int = BATCH) -> dict:
    import torch

    from lmcollapse.config import GenerateConfig, PipelineConfig
    from lmcollapse.engine.sampling import write_synthetic_corpus
    from lmcollapse.stages.pipeline import make_accelerator

    start_as_a_command()
    tokenizer, prompts = prompts_for(case, count_for(case))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_model(tokenizer, "opt-125m" if device == "cuda" else "tiny-opt").to(device).eval()
    settings = CASES[case]
    # Two processes take one shard each, in batches of its size (the batch a probe chooses here)
    config = GenerateConfig(**settings, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS,
                            batch_size=batch if processes == 1 else -(-len(prompts) // processes),
                            shard_size=-(-len(prompts) // processes),  # one shard per process
                            cache_implementation="static" if static else "dynamic",
                            sampler="inverse-cdf" if icdf else "multinomial", batch_probe=probe,
                            attn_implementation="eager" if eager else None)
    records = human_records(prompts, prefix="p")
    accelerator = make_accelerator(PipelineConfig())
    scratch = Path(os.environ.get("BENCH_SCRATCH") or tempfile.mkdtemp()) / "synthetic"  # one folder for every process
    started = time.perf_counter()
    shards = write_synthetic_corpus(model, tokenizer, records, config, seed=0, generation=0, model_label="bench",
                                    out_dir=scratch, accelerator=accelerator, progress=False)
    seconds = time.perf_counter() - started
    # What ran is what the label says: the stage records its decoding settings beside the shards.
    recorded = json.loads((scratch / "generation_config.json").read_text())
    assert (recorded.get("cache_implementation") == "static") == static, recorded
    assert ("lmcollapse_sampler" in recorded) == icdf and ((scratch / "batch_probe.json").is_file() == probe), recorded
    assert (recorded.get("lmcollapse_attn_implementation") == "eager") == eager, recorded
    chosen = json.loads((scratch / "batch_probe.json").read_text())["batch_size"] if probe else config.batch_size
    new_tokens = sum(s["new_tokens"] for s in shards)
    label = "lmcollapse stage" + (" + inverse-cdf sampler" if icdf else "") + (" + static cache" if static else "") \
        + (" + eager attention" if eager else "") + (f", batch {batch}" if batch != BATCH else "") \
        + (f" + batch probe (chose {chosen})" if probe else "") + (f", {processes} processes" if processes > 1 else "")
    return {"variant": label, "case": case, "prompts": len(prompts),
            "seconds": seconds, "tokens_per_second": new_tokens / seconds, "peak_rss_mb": peak_rss_mb(),
            "flops": useful_flops(model, prompts, case), **_gpu_memory()}


def variant_reference(case: str, same_allocator: bool = False) -> dict:
    import torch

    if same_allocator:
        start_as_a_command()
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
    return {"variant": "reference loop" + (", same allocator" if same_allocator else ""), "case": case, "prompts": len(prompts), "seconds": seconds,
            "tokens_per_second": len(kept) * NEW_TOKENS / seconds, "peak_rss_mb": peak_rss_mb(),
            "flops": useful_flops(model, prompts, case), **_gpu_memory()}


def _gpu_memory() -> dict:
    import torch

    return {"gpu_peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
            "gpu_reserved_memory_gb": torch.cuda.max_memory_reserved() / 1e9} if torch.cuda.is_available() else {}


# Twelve rows, about four minutes on two cores: each case's reference loop (and with our allocator
# setting), ours with transformers' sampler, the inverse-CDF sampler alone, the shipped settings
# (pipelines/tiny.yaml: inverse-cdf, static cache, eager attention, batch 256) and those in two
# processes. The steps between (the static cache or the probe for beam search, inverse-cdf +
# static without eager, batch 128 or 1,024, the probe when sampling: each measured in earlier
# README tables) are left out of make bench to keep it under ten minutes; --only runs any of them.
# The sampling cases' stage with multinomial draws, a dynamic cache and SDPA (the settings before
# the fast path): timed by default on a GPU only, to keep make bench under 10 minutes on a CPU.
PLAIN_SAMPLING = ["ours:sample", "ours:varlen"]
VARIANTS = [f"{side}:{case}" for case in CASES for side in ("ours", "reference", "reference+allocator")
            if (side, case) != ("reference+allocator", "varlen") and f"{side}:{case}" not in PLAIN_SAMPLING] + [
    "ours+icdf:sample", "ours+icdf+static+eager+b256:sample", "ours+icdf+static+eager+2proc:sample",
    "ours+icdf+static+eager+b256:varlen"]
EXTRA_VARIANTS = PLAIN_SAMPLING + [
    "ours+static:beam", "ours+probe:beam", "ours+icdf+static:sample", "ours+icdf+static+eager:sample",
    "ours+icdf+static+eager+b1024:sample", "ours+icdf+static+eager+probe:sample", "ours+icdf:varlen"]


def main(variants: list[str] | None) -> None:
    import torch

    require_corpus()
    gpu = torch.cuda.is_available()
    variants = variants or (VARIANTS + PLAIN_SAMPLING if gpu else VARIANTS)
    if gpu:  # one process per GPU: the two-process variants are for a CPU's cores
        variants = [v for v in variants if "+2proc" not in v]
    results = run_variants(Path(__file__), variants)
    peak, how = matmul_peak()
    print(f"generation: tiny-opt (opt-125m shape on a GPU), {NEW_TOKENS} new tokens per prompt, batches of {BATCH}")
    print(f"machine: {machine()}; matmul peak {peak / 1e9:,.0f} GFLOP/s ({how})")
    reference = {r["case"]: r for r in results if r["variant"] == "reference loop"}
    same = {r["case"]: r for r in results if r["variant"] == "reference loop, same allocator"}

    def ratio(r: dict, to: dict) -> str:
        return f"{r['tokens_per_second'] / to[r['case']]['tokens_per_second']:.2f}" if r["case"] in to else ""

    rows = [[r["case"], r["variant"], r["prompts"], f"{r['seconds']:.1f}", f"{r['tokens_per_second']:,.0f}",
             of_peak(r["flops"] / r["seconds"], peak), f"{r['peak_rss_mb']:,.0f}", ratio(r, reference), ratio(r, same)]
            for r in results]
    header = ["case", "variant", "prompts", "seconds", "new tokens/s", "achieved (of peak)", "peak RSS MB", "ratio",
              "ratio, same allocator"]
    if any("gpu_peak_memory_gb" in r for r in results):
        header += ["GPU GB live (reserved)"]
        for row, r in zip(rows, results):
            row += [f"{r['gpu_peak_memory_gb']:.1f} ({r['gpu_reserved_memory_gb']:.1f})"]
    print_table(header, rows)
    print("ratio: tokens per second over the reference loop's (a default process), same case; ours runs as the command "
          "line runs it (glibc keeping freed memory, CUDA's expandable segments: lmcollapse/engine/allocator.py) and also writes "
          "Parquet shards")
    print("ratio, same allocator: over the reference loop run with that allocator setting too")
    print("achieved: the decoding's useful forward FLOPs (2N + 4 L d context per token, every beam, no padding) per second")
    print("targets: sampling >= 3x and beam search >= 1.5x the reference loop")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant")
    parser.add_argument("--only", nargs="+", choices=VARIANTS + EXTRA_VARIANTS, default=None,
                        help="these variants only (a ratio needs its case's reference loop among them)")
    args = parser.parse_args()
    if args.variant:
        side, case = args.variant.split(":")
        if side.startswith("reference"):
            print(json.dumps(variant_reference(case, same_allocator=side == "reference+allocator")))
        else:
            batch = next((int(part[1:]) for part in side.split("+") if re.fullmatch(r"b\d+", part)), BATCH)
            result = variant_ours(case, static="+static" in side, icdf="+icdf" in side, probe="+probe" in side,
                                  processes=2 if "+2proc" in side else 1, eager="+eager" in side, batch=batch)
            from lmcollapse.cli import is_main_process

            if is_main_process():  # rank 0 reports
                print(json.dumps(result))
    else:
        main(args.only)
