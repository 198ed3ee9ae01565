"""The allocator setting every command runs with (lmcollapse/engine/allocator.py): it takes effect, it can
be turned off, a bad value is refused, and it never changes what a stage computes."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, run_cli
from lmcollapse import cli
from lmcollapse.engine.allocator import ENV, keep_freed_memory
from lmcollapse.errors import LmcollapseError

glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33 (mallinfo2)")

# Run in a fresh process: how much of a 100 MiB tensor glibc served by mmap (mallinfo2.hblkhd).
MMAPPED = """
import ctypes, json, torch
from lmcollapse.engine.allocator import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
applied = keep_freed_memory()
before = libc.mallinfo2().hblkhd
block = torch.empty(100 * 2**20 // 4)
print(json.dumps({"applied": applied, "mmapped_mib": (libc.mallinfo2().hblkhd - before) / 2**20}))
"""

# Train three steps and beam-search a batch, with tensors above glibc's 32 MiB mmap threshold
# (logits of 32 x 64 tokens over 8,192 entries): the weights' and the tokens' digests.
COMPUTE = """
import hashlib, json, sys, torch
sys.path.insert(0, "tests")
from helpers import micro_opt
from lmcollapse.engine.allocator import keep_freed_memory
keep_freed_memory()
torch.manual_seed(0)
model = micro_opt(vocab_size=8192, positions=128)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(3, 8192, (32, 64))
for _ in range(3):
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
with torch.no_grad():
    out = model.generate(ids[:16], attention_mask=torch.ones_like(ids[:16]), num_beams=5, do_sample=False,
                         max_new_tokens=8, min_new_tokens=8, repetition_penalty=3.0, pad_token_id=1)
weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({"weights": weights, "tokens": out.tolist()}))
"""


def in_fresh_process(code: str, malloc: str) -> dict:
    # The machine's own thread count: multithreaded kernels are where a difference could show.
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, ENV: malloc})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_large_blocks_stay_in_the_heap_unless_turned_off():
    kept = in_fresh_process(MMAPPED, "keep")
    assert kept["applied"] and kept["mmapped_mib"] < 1  # reused by the next block, no page faults
    system = in_fresh_process(MMAPPED, "system")
    assert not system["applied"] and system["mmapped_mib"] >= 100  # glibc's default: a fresh mmap


@glibc
def test_the_setting_changes_nothing_a_stage_computes():
    assert in_fresh_process(COMPUTE, "keep") == in_fresh_process(COMPUTE, "system")


def test_cuda_gets_expandable_segments_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setenv(ENV, "system")
    keep_freed_memory()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    monkeypatch.setenv(ENV, "")  # empty: the default
    keep_freed_memory()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    keep_freed_memory()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"  # the user's choice stands


def test_a_bad_value_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setenv(ENV, "tcmalloc")
    with pytest.raises(LmcollapseError, match=r"LMCOLLAPSE_MALLOC='tcmalloc' is not a choice: set it to keep"):
        keep_freed_memory()
    done = run_cli("pipelines", env={ENV: "tcmalloc"})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "lmcollapse: error: LMCOLLAPSE_MALLOC='tcmalloc' is not a choice: set it to keep (the default) or system, "
        "or unset it"]


def test_every_command_applies_it_first(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    assert cli.main(["pipelines"]) == 0
    assert calls == [True]
