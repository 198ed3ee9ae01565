"""Interrupt anything, lose nothing: kills, signals, a second writer, a full disk, damaged files.

A reference run is built uninterrupted. The same config is then run through the real command
line in subprocesses that die at exact instants (failpoints, see lmcollapse/run/failpoints.py), and
resumed each time; the end result must be byte-identical to the reference on CPU.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, assert_same_results, build_quietly, micro_raw_config, run_cli, tree_hashes, write_pipeline
from lmcollapse.config import build_config
from lmcollapse.run.atomic import sha256_file
from lmcollapse.run.layout import RunDir
from lmcollapse.run.lock import lock_holder

# End-to-end runs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def raw(small_corpus):
    return micro_raw_config(small_corpus)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, raw) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("reference") / "run")
    build_quietly(build_config(raw), run.root, 1)
    return run


@pytest.fixture
def pipeline(tmp_path, raw) -> Path:
    return write_pipeline(tmp_path / "micro.yaml", raw)


def lmc(pipeline: Path, run: Path, last: int = 1, failpoint: str | None = None, *extra: str):
    env = {"LMCOLLAPSE_FAILPOINT": failpoint} if failpoint else {"LMCOLLAPSE_FAILPOINT": ""}
    return run_cli("-q", "generation", str(last), "--pipeline", str(pipeline), "--run", str(run), "--no-progress",
                   *extra, env=env)



def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(reference, pipeline, tmp_path):
    run = RunDir(tmp_path / "run")
    gen0, gen1 = run.generation(0), run.generation(1)
    # Each step: (failpoint, what must be on disk right after the kill). Counts restart in every
    # process, so each line names a point that the resumed process reaches for the first time.
    steps = [
        ("train-step@3", lambda: (gen0.checkpoints / "step-000002").is_dir() and not gen0.model.exists()),
        ("checkpoint-write", lambda: (gen0.checkpoints / ".step-000004.tmp").is_dir()
            and not (gen0.checkpoints / "step-000004").exists()),
        ("write:model", lambda: (gen0.root / ".model.tmp").is_dir() and not gen0.model.exists()),
        ("generate-batch@2", lambda: gen0.model.is_dir() and not list(gen0.synthetic.glob("shard-*.parquet"))),
        ("write:shard-00001.parquet", lambda: (gen0.synthetic / ".shard-00001.parquet.tmp").is_file()
            and (gen0.synthetic / "shard-00000.json").is_file()),
        ("write:shard-00001.json", lambda: (gen0.synthetic / "shard-00001.parquet").is_file()
            and not (gen0.synthetic / "shard-00001.json").exists()),
        ("eval-batch@2", lambda: (gen0.synthetic / "shard-00002.json").is_file() and not gen0.eval.exists()),
        ("write:tails.json", lambda: (gen0.eval / "text_metrics.json").is_file() and not (gen0.eval / "tails.json").exists()),
        ("write:manifest.json", lambda: (gen0.eval / "tails.json").is_file() and not gen0.is_complete),
        ("train-step@2", lambda: gen0.is_complete and not gen1.model.exists()),
    ]
    for point, state in steps:
        result = lmc(pipeline, run.root, 1, point)
        assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr[-2000:])
        assert state(), f"not where {point} should have stopped it"
        # The dead writer's lock file stays behind and names it, but nobody holds the lock.
        assert json.loads(run.lock_file.read_text())["pid"] > 0 and lock_holder(run) is None
    result = lmc(pipeline, run.root, 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_results(reference, run)


# micro: 24 blocks, batch 8, 2 epochs -> 6 optimizer steps a generation, a checkpoint every 2.
STEPS = 6


@pytest.fixture(scope="module", params=["base", "previous"])
def three_generations(request, tmp_path_factory, small_corpus):
    """An uninterrupted reference of generations 0..2 under model.init=base and =previous."""
    raw = micro_raw_config(small_corpus, [f"model.init={request.param}"])
    run = RunDir(tmp_path_factory.mktemp(f"reference-{request.param}") / "run")
    build_quietly(build_config(raw), run.root, 2)
    return raw, run


@pytest.mark.parametrize("first, second", [("killpg", "sigint"), ("sigint", "killpg")])
def test_interrupting_later_generations_in_a_process_that_trained_earlier_ones(three_generations, tmp_path,
                                                                              first, second):
    """One process trains generation 0 and dies in generation 1's training; the next resumes
    generation 1 and dies in generation 2's. accelerate must not carry generation 0's model,
    optimizer or scheduler into generation 1's checkpoints (it restored them on resume)."""
    raw, reference = three_generations
    pipeline = write_pipeline(tmp_path / "micro.yaml", raw)
    run = RunDir(tmp_path / "run")
    stopped = {"killpg": -signal.SIGKILL, "sigint": 130}

    # Step 3 of generation 1, in the process that trained generation 0's 6 steps.
    result = lmc(pipeline, run.root, 2, f"train-step@{STEPS + 3}={first}")
    assert result.returncode == stopped[first], result.stderr[-2000:]
    assert run.generation(0).is_complete and not run.generation(1).model.exists()
    checkpoints = sorted(run.generation(1).checkpoints.glob("step-*"))
    assert checkpoints, "no checkpoint of generation 1 was written"
    # Exactly one model, optimizer and scheduler: generation 1's.
    assert {p.name for p in checkpoints[-1].iterdir()} == {
        "model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json"}

    # This process resumes generation 1 at its last checkpoint and trains it to the end (6 - k
    # steps), then stops at step 3 of generation 2.
    resumed_at = int(checkpoints[-1].name.removeprefix("step-"))
    result = lmc(pipeline, run.root, 2, f"train-step@{STEPS - resumed_at + 3}={second}")
    assert result.returncode == stopped[second], result.stderr[-2000:]
    assert run.generation(1).is_complete and not run.generation(2).model.exists()
    assert sorted(run.generation(2).checkpoints.glob("step-*"))

    # Resumed after the run was moved to a folder with another name: nothing depends on the name.
    moved = RunDir(tmp_path / "moved elsewhere" / "another name")
    moved.root.parent.mkdir()
    run.root.rename(moved.root)
    result = lmc(pipeline, moved.root, 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_results(reference, moved, generations=(0, 1, 2))


@pytest.mark.parametrize("generate_precision", ["no", "bf16"])
def test_bf16_training_generates_at_the_configured_precision_interrupted_or_not(small_corpus, tmp_path,
                                                                               generate_precision):
    """Training under bf16 autocast must not leak into generation: the corpus a model writes right
    after training equals the one it writes after being reloaded from disk."""
    raw = micro_raw_config(small_corpus, ["train.mixed_precision=bf16", f"generate.mixed_precision={generate_precision}",
                                          "evaluate.mixed_precision=bf16"])
    reference = RunDir(tmp_path / "reference")
    build_quietly(build_config(raw), reference.root, 1)
    pipeline = write_pipeline(tmp_path / "micro.yaml", raw)
    run = RunDir(tmp_path / "run")
    # Killed after generation 0's model is saved, while generating: the resumed process reloads it.
    assert lmc(pipeline, run.root, 1, "generate-batch@1").returncode == -signal.SIGKILL
    assert run.generation(0).model.is_dir() and not run.generation(0).synthetic_shards()
    assert lmc(pipeline, run.root, 1).returncode == 0
    assert_same_results(reference, run)
    manifest = json.loads(run.generation(1).manifest.read_text())
    assert manifest["mixed_precision"] == {"train": "bf16", "generate": generate_precision, "evaluate": "bf16"}


@pytest.mark.parametrize("point, signal_name, where", [
    ("train-step@3=sigterm", "SIGTERM", "while training generation 0 (step 3/6)"),
    ("generate-batch@1=sigint", "SIGINT", "while generating generation 0's corpus (shard 1)"),
    ("eval-batch@1=sigterm", "SIGTERM", "while evaluating"),
    # after generation 0's last safe point (its manifest is being written): generation 1 is not begun
    ("write:manifest.json@3=sigint", "SIGINT", "before generation 1"),
])
def test_sigint_and_sigterm_stop_cleanly_and_resume(reference, pipeline, tmp_path, point, signal_name, where):
    run = RunDir(tmp_path / "run")
    result = lmc(pipeline, run.root, 1, point)
    assert result.returncode == 130
    assert result.stderr.strip().splitlines()[-1] == \
        f"lmcollapse: error: stopped by {signal_name} {where}; rerun the same command to resume"
    if signal_name == "SIGTERM" and "training" in where:
        assert (run.generation(0).checkpoints / "step-000003").is_dir()  # the step in hand was saved
    if "generating" in where:
        assert (run.generation(0).synthetic / "shard-00000.json").is_file()  # the shard in hand was finished
    if "before" in where:
        assert run.generation(0).is_complete and not run.generation(1).root.exists()
    assert lock_holder(run) is None
    assert lmc(pipeline, run.root, 1).returncode == 0
    assert_same_results(reference, run)


def test_two_concurrent_make_generation_one_proceeds(reference, pipeline, tmp_path):
    run = RunDir(tmp_path / "run")
    # make's venv is this interpreter's; its install marker is marked old, so make never reinstalls
    # the package (from whichever checkout runs the tests) into it.
    bin_dir = Path(sys.executable).parent
    make = ["make", "-s", "-o", f"{bin_dir}/.installed", "generation-1", f"PIPELINE={pipeline}", f"RUN={run.root}",
            f"PYTHON={sys.executable}", f"BIN={bin_dir}"]
    first = subprocess.Popen(make, cwd=REPO, env={**_env(), "LMCOLLAPSE_FAILPOINT": "train-step@1=sleep:6"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while lock_holder(run) is None:
        assert first.poll() is None and time.time() < deadline, "the first writer never took the lock"
        time.sleep(0.1)
    second = subprocess.run(make, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    assert re.search(rf"lmcollapse: error: run {re.escape(str(run.root))} is being written by another process "
                     r"\(pid \d+ on \S+, since [\d: -]+\): wait for it to finish or stop it", second.stderr), second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert_same_results(reference, run)


def _env() -> dict:
    import os

    return {**os.environ, "LMCOLLAPSE_FAILPOINT": ""}


def test_disk_full_while_writing_a_shard(reference, pipeline, tmp_path):
    run = RunDir(tmp_path / "run")
    assert lmc(pipeline, run.root, 0).returncode == 0
    before = tree_hashes(run.root, skip=("generation-01", "metrics.csv", "metrics.json"))
    result = lmc(pipeline, run.root, 1, "write:shard-00001.parquet=enospc")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1].startswith("lmcollapse: error: disk full while writing shard-00001.parquet: free space")
    assert not (run.generation(1).synthetic / ".shard-00001.parquet.tmp").exists()  # nothing half-written left
    assert tree_hashes(run.root, skip=("generation-01", "metrics.csv", "metrics.json")) == before
    assert lmc(pipeline, run.root, 1).returncode == 0
    assert_same_results(reference, run)


@contextlib.contextmanager
def small_disk(where: Path, reference: RunDir):
    """An 8 MB tmpfs at ``where`` holding a copy of ``reference`` without generation 1 (where this
    machine allows mounting one): the run and the hashes of what it holds."""
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root and CAP_SYS_ADMIN; the failpoint test above covers the logic")
    try:
        run = RunDir(where / "run")
        shutil.copytree(reference.root, run.root, ignore=shutil.ignore_patterns("generation-01", "metrics.*"))
        yield run, tree_hashes(run.root)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_disk(reference, pipeline, tmp_path):
    """On a small tmpfs that fills up mid-generation (where this machine allows mounting one)."""
    mount = tmp_path / "disk"
    with small_disk(mount, reference) as (run, before):
        filler = mount / "filler"
        free = shutil.disk_usage(mount).free
        filler.write_bytes(b"\0" * max(free - 96 * 1024, 0))  # leave room for a little, not a checkpoint
        result = lmc(pipeline, run.root, 1)
        assert result.returncode == 3, result.stderr[-2000:]
        assert "lmcollapse: error: disk full while writing" in result.stderr
        assert tree_hashes(run.root, skip=("generation-01", "metrics.csv", "metrics.json")) == before
        filler.unlink()
        assert lmc(pipeline, run.root, 1).returncode == 0
        assert_same_results(reference, run)


def test_a_disk_that_fills_during_a_checkpoint_save(reference, pipeline, tmp_path):
    """torch's writer reports a full disk as "unexpected pos ..."; the scratch checkpoint must be
    diagnosed before it is removed (removing it frees the space that shows the disk was full)."""
    mount = tmp_path / "disk"
    with small_disk(mount, reference) as (run, before):
        # Generation 1 pauses after its first optimizer step (its training set is written by then);
        # the disk is filled meanwhile, so the checkpoint after step 2 finds no room.
        writer = subprocess.Popen(
            [sys.executable, "-m", "lmcollapse", "-q", "generation", "1", "--pipeline", str(pipeline),
             "--run", str(run.root), "--no-progress"], cwd=REPO, env={**_env(), "LMCOLLAPSE_FAILPOINT": "train-step@1=sleep:6"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not run.generation(1).train_set.is_file():
            assert writer.poll() is None and time.time() < deadline, writer.stderr.read()[-2000:]
            time.sleep(0.05)
        filler = mount / "filler"
        filler.write_bytes(b"\0" * max(shutil.disk_usage(mount).free - 16 * 1024, 0))
        assert writer.wait(timeout=300) == 3
        message = writer.stderr.read().strip().splitlines()[-1]
        assert message.startswith("lmcollapse: error: disk full while writing checkpoint "), message
        assert not list(run.generation(1).checkpoints.glob(".step-*")), "the half-written checkpoint was left behind"
        assert tree_hashes(run.root, skip=("generation-01", "metrics.csv", "metrics.json")) == before
        filler.unlink()
        assert lmc(pipeline, run.root, 1).returncode == 0
        assert_same_results(reference, run)


def test_a_damaged_shard_of_a_completed_generation_stops_the_next(reference, pipeline, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(reference.root, run.root)
    shard = run.generation(1).synthetic / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])  # truncated
    before = tree_hashes(run.root)
    result = lmc(pipeline, run.root, 2)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"lmcollapse: error: {shard} changed and cannot be read (")
    rebuild = f"rm -r {run.generation(1).root} && make generation-1 PIPELINE={run.pipeline_file} RUN={run.root}"
    # A truncated shard cannot be used as it is: --accept-changed is not offered
    assert message.endswith(f"since generation-01 completed: restore it, or rebuild it with `{rebuild}`")
    assert tree_hashes(run.root) == before


def test_accept_changed_uses_a_modified_shard_and_records_its_hash(reference, pipeline, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(reference.root, run.root)
    shard = run.generation(1).synthetic / "shard-00002.parquet"
    replacement = run.generation(1).synthetic / "shard-00001.parquet"
    shard.write_bytes(replacement.read_bytes())  # valid Parquet, other records
    assert lmc(pipeline, run.root, 2).returncode == 2
    result = lmc(pipeline, run.root, 2, None, "--accept-changed")
    assert result.returncode == 0, result.stderr[-2000:]
    consumed = json.loads(run.generation(2).manifest.read_text())["consumed"]
    assert consumed["generation-01/synthetic/shard-00002.parquet"] == sha256_file(shard)


def test_a_truncated_checkpoint_is_an_error_not_a_silent_restart(pipeline, tmp_path):
    run = RunDir(tmp_path / "run")
    assert lmc(pipeline, run.root, 0, "train-step@5").returncode == -signal.SIGKILL
    checkpoint = run.generation(0).checkpoints / "step-000004"
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    before = tree_hashes(run.root)
    result = lmc(pipeline, run.root, 0)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"lmcollapse: error: checkpoint file {weights} is missing or does not match its recorded sha256 "
        f"(truncated or modified): delete {checkpoint} to resume from an earlier checkpoint")
    assert tree_hashes(run.root) == before
    shutil.rmtree(checkpoint)
    assert lmc(pipeline, run.root, 0).returncode == 0  # resumes from step-000002


def test_status_shows_complete_partial_and_missing(pipeline, tmp_path):
    run = RunDir(tmp_path / "run")
    assert lmc(pipeline, run.root, 1, "write:shard-00001.parquet@2").returncode == -signal.SIGKILL
    result = run_cli("status", "--run", str(run.root))
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:] == [
        "writer: none (the run is not being written)",
        "base           complete",
        "human          complete",
        "generation-00  complete",
        "generation-01  partial (training set, model trained, 1 of 3 shards)",
        f"next: make generation-1 PIPELINE={run.pipeline_file} RUN={run.root} would resume generation-01",
        "verified: every file of every complete stage matches its manifest",
    ]
