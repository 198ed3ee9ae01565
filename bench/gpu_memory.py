"""What one batch of the paper's beam search holds on a GPU: PyTorch's live allocations at their
peak, and what its caching allocator reserved (what nvidia-smi shows), per batch size, with the
default allocator and with ``expandable_segments`` (set before CUDA starts, so each its own process).

The paper's decoding (5 beams, repetition penalty 3.0, exactly 64 new tokens) on an opt-125m-shaped
model under bf16 autocast, as pipelines/gpu-check.yaml runs it. The dynamic KV cache grows by one
token per step, so every step asks for slightly larger blocks than the last freed; this measures
how much of the reserved memory is live and how much is the allocator's cache.

    python -m bench.gpu_memory      # on a CUDA GPU (make gpu-check runs it)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import REPO, print_table, require_corpus, tiny_assets, tiny_model

BATCHES = (256, 512)
ALLOCATORS = {"default": "", "expandable_segments": "expandable_segments:True"}


def measure(batch: int) -> dict:
    import numpy as np
    import torch

    from lmcollapse.engine.precision import autocast

    tokenizer, blocks, _ = tiny_assets(batch)
    model = tiny_model(tokenizer, "opt-125m").to("cuda").eval()
    ids = torch.as_tensor(np.asarray(blocks[:batch]), dtype=torch.long, device="cuda")
    settings = dict(num_beams=5, do_sample=False, repetition_penalty=3.0, min_new_tokens=64, max_new_tokens=64,
                    pad_token_id=tokenizer.pad_token_id, length_penalty=1.0, early_stopping=False)
    with torch.no_grad(), autocast("bf16", torch.device("cuda")):
        model.generate(ids[:2], attention_mask=torch.ones_like(ids[:2]), **settings)  # one-off costs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"batch": batch, "allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
            "reserved_gb": torch.cuda.max_memory_reserved() / 1e9, "seconds": seconds,
            "new_tokens_per_second": batch * 64 / seconds,
            "alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0)}


def main() -> None:
    require_corpus()
    rows = []
    for name, setting in ALLOCATORS.items():
        for batch in BATCHES:
            env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": setting, "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run([sys.executable, "-m", "bench.gpu_memory", str(batch)], cwd=REPO, capture_output=True, text=True, env=env,
                                  timeout=300)
            if done.returncode:
                rows.append([name, batch, "failed: " + done.stderr.strip().splitlines()[-1][:80], "", "", "", ""])
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append([name, batch, f"{r['allocated_gb']:.1f}", f"{r['reserved_gb']:.1f}", r["alloc_retries"],
                         f"{r['seconds']:.1f}", f"{r['new_tokens_per_second']:,.0f}"])
    print("one batch of the paper's beam search (5 beams, 64 new tokens, bf16 autocast), opt-125m shape")
    print_table(["allocator", "prompts", "allocated GB", "reserved GB", "alloc retries", "seconds", "new tokens/s"], rows)
    print("allocated: PyTorch's live tensors at the peak; reserved: with its cache (nvidia-smi's figure);"
          " alloc retries: times the allocator freed its cache to satisfy a request")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(measure(int(sys.argv[1]))))
    else:
        main()
