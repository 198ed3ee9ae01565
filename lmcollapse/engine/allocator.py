"""Keep freed memory in the process: the allocator settings every lmcollapse command runs with.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back to the kernel on ``free``, so the next block of that size faults in
every page again. A training step of tiny-opt allocates several such blocks (the logits of a
32 x 64-token batch over a 4,096-token vocabulary are 33.5 MB), and beam search allocates them at
every step (the KV cache it grows and reorders): on the two cores of the CI machine the output
matmul of a training step ran at 115 GFLOP/s instead of 207, most of the difference page faults.
PyTorch's CPU tuning guide recommends another allocator (tcmalloc, jemalloc) loaded with
LD_PRELOAD; ``keep_freed_memory`` gets most of the gain from glibc itself, in-process: no
``mmap`` for large blocks (``M_MMAP_MAX=0``) and no returning the top of the heap below 2 GiB
(``M_TRIM_THRESHOLD``), so freed blocks are reused without faults. The process keeps its peak
memory until it exits instead of returning it between steps.

On a GPU the same growth pattern (beam search's cache, one token longer at every step) makes
PyTorch's caching allocator hold far more than it uses: one batch of the paper's beam search at 512
prompts on an H200 used 13.2 GB and reserved 149 GB (bench/gpu_memory.py), 16.3 GB with
``expandable_segments``. So ``PYTORCH_CUDA_ALLOC_CONF`` is set to that, unless the user set it.

It changes where tensors live, never what is computed: a run's files are the same with it and
without it. ``LMCOLLAPSE_MALLOC=system`` leaves both allocators' defaults; on a C library without
``mallopt`` (macOS, musl) glibc's part is skipped.

    keep_freed_memory()   # the command line calls it first; benchmarks of the stages too
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the top of the heap is returned beyond ~2 GiB only

ENV = "LMCOLLAPSE_MALLOC"
CHOICES = ("keep", "system")


def keep_freed_memory() -> bool:
    """Apply the settings above (unless ``LMCOLLAPSE_MALLOC=system``); True if glibc's was applied."""
    choice = os.environ.get(ENV) or "keep"  # unset or empty: the default
    if choice not in CHOICES:
        from lmcollapse.errors import LmcollapseError

        raise LmcollapseError(f"{ENV}={choice!r} is not a choice: set it to keep (the default) or system, "
                              f"or unset it")
    if choice == "system":
        return False
    # Read by PyTorch when CUDA's allocator starts: the command line calls this before any stage.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc: its allocator has no such switch
        log.debug("no mallopt in this C library: the allocator keeps its defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
