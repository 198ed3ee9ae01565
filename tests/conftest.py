"""Fixtures: the WikiText-2 corpus (from LMCOLLAPSE_DATA_DIR, never copied into the repository),
a small generated corpus folder for the mechanics tests, and an offline environment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Under pytest-xdist (make test: one worker per core), each worker computes with its share of the
# cores rather than every worker with all of them, and each subprocess a test starts inherits the
# share (tests that compare thread counts set OMP_NUM_THREADS themselves). Set before torch loads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _SHARE)
    os.environ.setdefault("MKL_NUM_THREADS", _SHARE)

# torch.compile's Inductor compiles in a pool of worker processes, one per core by default, each of
# which imports torch before it helps: on two cores that cost a compiling test 13 s of its 28 (alone;
# more beside another worker) and saved nothing. Inherited by every subprocess a test starts.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

# Tests never reach the network: the hub is off, the corpus comes from LMCOLLAPSE_DATA_DIR. Set
# when this file is imported, before anything imports datasets or huggingface_hub (they read
# these variables once, at import; helpers below does), and inherited by every subprocess a test starts.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Pretrained bases go to a cache of the test session's own, never the user's ~/.cache/lmcollapse;
# so do the datasets library's Arrow files: it keys a local folder's cache entry by its files'
# modification times, and an entry from another session matched a rebuilt corpus's (a stale read).
os.environ["LMCOLLAPSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmcollapse-test-cache-")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="lmcollapse-test-datasets-")

from helpers import REPO, micro_run, write_generated_corpus  # noqa: E402  (after the environment above)

# make test hands whole files to the xdist workers in collection order (--dist loadfile
# --no-loadscope-reorder). Longest first, so no worker starts a long file while the other is
# finishing: xdist's own order (files with the most tests first) started the SLURM file, four
# tests and three minutes, last. Ranked by each file's total in a run (2026-12-07, two workers:
# resume 447 s, studies 275 s, integrity 221 s, scale 174 s, ...); files not named keep their order.
LONGEST_FIRST = ("test_resume.py", "test_studies.py", "test_integrity.py", "test_scale.py", "test_slurm.py",
                 "test_chains.py", "test_report.py", "test_train.py", "test_pretrain.py", "test_pipeline.py",
                 "test_detectors.py", "test_hostile_inputs.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order within a file


def _data_dir() -> Path | None:
    candidates = [os.environ.get("LMCOLLAPSE_DATA_DIR"), str(REPO.parent / "shared" / "data")]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "wikitext-2-raw" / "wiki.valid.raw").is_file():
            return Path(candidate).resolve()
    return None


DATA_DIR = _data_dir()
if DATA_DIR is None and os.environ.get("CI"):
    # In CI every test must run: a skipped corpus test would pass without testing anything.
    raise pytest.UsageError("CI=true but WikiText-2 was not found: set LMCOLLAPSE_DATA_DIR")


if DATA_DIR is not None:
    os.environ["LMCOLLAPSE_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None:
        pytest.skip("WikiText-2 not found: set LMCOLLAPSE_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A local corpus folder (train.txt, test.txt) of generated WikiText-format text: the
    mechanics tests (stages, resume, regimes, report, command line) need no external corpus."""
    return write_generated_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def make_micro_run(tmp_path, small_corpus):
    """A factory of micro runs in this test's folder: ``make_micro_run(["train.epochs=1"], last_generation=2)``
    builds generations 0..2 of the micro pipeline with those overrides; returns (RunDir, config)."""
    def make(overrides: list[str] | None = None, last_generation: int = 1, name: str = "run"):
        return micro_run(tmp_path, small_corpus, overrides, last_generation, name)
    return make
