"""Two threads compute what one thread computes, in every fresh process (engine/vector_math.py).

Without start_vector_math, the first VML call of a process, split over two threads, took another
code path for one thread's chunk in 1-6% of fresh processes on the two-core CI machine; forked children
of one parent that has imported torch but never computed show it at 0.5-2%, so the test
forks many (about ten seconds). Each child starts as a command does (a matrix product, which
starts the thread pool, then make_accelerator's start_vector_math) and takes the square root of
4,800 doubles on two threads; every one must equal the parent's result at one thread.
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO

CHILDREN = 200

SCRIPT = f"""
import hashlib, os
import torch
from lmcollapse.engine.vector_math import start_vector_math

def values():
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(4800, dtype=torch.float64, generator=generator) + 0.5) * 1e-9

def digest(tensor):
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()

digests = []
for _ in range({CHILDREN}):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a fresh command: nothing computed yet in this process
        os.close(read)
        torch.set_num_threads(2)
        torch.ones(256, 256) @ torch.ones(256, 256)
        start_vector_math()
        os.write(write, digest(values().sqrt()).encode())
        os._exit(0)
    os.close(write)
    digests.append(os.read(read, 64).decode())
    os.close(read)
    os.waitpid(pid, 0)
torch.set_num_threads(1)
alone = digest(values().sqrt())
print(sum(d == alone for d in digests), len(set(digests)))
"""


def test_two_threads_compute_what_one_computes_in_every_fresh_process():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    equal, distinct = map(int, done.stdout.split())
    assert (equal, distinct) == (CHILDREN, 1)
