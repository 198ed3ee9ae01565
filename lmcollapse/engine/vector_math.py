"""Start MKL's vector math on one thread, before any operation runs it on several.

PyTorch's CPU build computes ``sqrt``, ``exp``, ``log`` and their kin on float tensors with MKL's
vector math library (VML), splitting a tensor of a few thousand elements over its OpenMP threads.
VML sets itself up on its first call in a process. When that first call comes from two threads at
once, one of them sometimes computes its chunk on another code path, for that call only: the square
root of 4,800 doubles came out different in the last bits in one thread's half (2,414 values off
the correctly rounded root, against 29 normally; measured on the two-core Ice Lake machine: in 1 to
6% of fresh processes, never on the second call, never at one thread, never after a call on one
thread). AdamW's first step takes the square root of its state, one value per weight (4,800 for the
test model's embeddings, more for tiny-opt's), so such a process trained other weights from step 1:
the resume tests failed now and then at two threads, and a pipeline's numbers could change from one
run to the next on the same machine.

``start_vector_math`` makes that first call on this thread, on a tensor too small to be split.
Every later call takes the path VML takes when no race happens, so the numbers are those a run
got before whenever the race missed it. A process that already ran VML is unaffected: the race
only touches the first call.

    start_vector_math()   # make_accelerator calls it, before any stage computes
"""

from __future__ import annotations

import torch


def start_vector_math() -> None:
    """Let VML set itself up now, on this thread alone (see above)."""
    torch.ones(8).sqrt()  # 8 elements: one chunk, this thread's; a VML function like every other
