"""Scale-out: the tiny pipeline under accelerate with two CPU processes equals the one-process run.

Training cuts every global batch into the same micro-batches whatever the number of processes,
generation shards and evaluation batches are fixed slices, so two processes compute what one does.
Bit for bit when every process uses the same number of threads (matrix products split their sums
over threads); at different thread counts the float sums differ in the last bits, bounded below.

Note: ``accelerate launch --cpu --num_processes 2`` starts *one* process in accelerate 1.x (its
multi-CPU path needs MPI and a hostfile); ``accelerate launch --multi_gpu --num_processes 2`` on a
machine without a GPU starts two, which lmcollapse runs on the CPU with gloo.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_cli
from lmcollapse.metrics.columns import VARYING
from lmcollapse.run.atomic import sha256_file

# End-to-end runs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

SMALL = ["data.max_train_blocks=64", "data.max_heldout_blocks=64", "train.epochs=1", "train.micro_batch_size=16",
         "generate.shard_size=32", "evaluate.self_bleu_samples=32", "pretrain.max_blocks=256", "pretrain.batch_size=16",
         "pretrain.micro_batch_size=8",
         "pretrain.warmup_steps=2"]
TIMING = VARYING  # the catalogue's wall-time columns


def one_process(run: Path, threads: int | None) -> None:
    # Each run pretrains its base in a cache of its own: pretraining is compared too.
    env = {"LMCOLLAPSE_CACHE_DIR": str(run.parent / "cache")} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    result = run_cli("-q", "generation", "0", "--pipeline", "pipelines/tiny.yaml", "--run", str(run), "--no-progress",
                     "--set", *SMALL, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def two_processes(run: Path) -> None:
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmcollapse", "-q", "generation", "0",
               "--pipeline", "pipelines/tiny.yaml", "--run", str(run), "--no-progress", "--set", *SMALL]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "LMCOLLAPSE_CACHE_DIR": str(run.parent / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("scale")
    two_processes(root / "two" / "run")
    one_process(root / "one" / "run", threads=1)
    return root / "one" / "run", root / "two" / "run"


def test_two_processes_really_ran(runs):
    one, two = runs
    assert json.loads((one / "generation-00" / "manifest.json").read_text())["processes"] == 1
    assert json.loads((two / "generation-00" / "manifest.json").read_text())["processes"] == 2


def test_two_processes_write_the_same_model_corpus_and_metrics(runs):
    one, two = runs
    generation = Path("generation-00")
    files = ["model/model.safetensors", "train-set.parquet", "eval/heldout_block_nll.npy", "eval/tails.npy"]
    files += [f"synthetic/{p.name}" for p in sorted((one / generation / "synthetic").glob("shard-*.parquet"))]
    assert len(files) == 4 + 2  # 64 prompts in shards of 32
    for name in files:
        assert sha256_file(one / generation / name) == sha256_file(two / generation / name), name
    assert rows(one) == rows(two)
    assert sha256_file(one / "base" / "model" / "model.safetensors") == sha256_file(two / "base" / "model" / "model.safetensors")


def test_at_other_thread_counts_the_difference_is_float_rounding(runs, tmp_path):
    _, two = runs
    default = tmp_path / "run"
    one_process(default, threads=2)
    a, b = rows(default)[0], rows(two)[0]
    # Rounding differences grow with every optimizer step (pretraining's, then fine-tuning's), and a
    # perplexity is the exponential of a mean; a real difference (other data, another seed) is > 1%.
    for metric in ("ppl_blocks", "ppl_sliding", "tail_ppl_p50", "train_loss"):
        assert float(a[metric]) == pytest.approx(float(b[metric]), rel=1e-4), metric


def test_two_processes_with_train_compile_equal_one(tmp_path, small_corpus):
    """train.compile compiles a function that calls the DDP-wrapped model: under two gloo
    processes it computes what one process does (the same micro-batches, the same sums)."""
    from helpers import micro_raw_config, write_pipeline

    pipeline = write_pipeline(tmp_path / "micro.yaml", micro_raw_config(small_corpus, [
        "train.compile=true", "train.micro_batch_size=4", "generations=1"]))
    accelerate = Path(sys.executable).parent / "accelerate"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmcollapse", "-q", "generation",
                               "0", "--pipeline", str(pipeline), "--run", str(tmp_path / "two"), "--no-progress"],
                              cwd=REPO, capture_output=True, text=True, timeout=600, env=environment)
    assert launched.returncode == 0, launched.stderr[-3000:]
    alone = run_cli("-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(tmp_path / "one"),
                    "--no-progress", env={"OMP_NUM_THREADS": "1"})
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
