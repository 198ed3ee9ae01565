"""Shared test helpers: a micro pipeline config and tree snapshots.

The micro pipeline (a 1-layer OPT of width 16, 16-token blocks, 24 training blocks) runs a
generation in about a second on a CPU, so end-to-end tests exercise the real stages.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from lmcollapse.config import PipelineConfig, build_config, parse_overrides, set_dotted
from lmcollapse.metrics.columns import VARYING
from lmcollapse.run.atomic import sha256_file
from lmcollapse.run.layout import RunDir

REPO = Path(__file__).resolve().parent.parent


def micro_raw_config(corpus: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "micro", "seed": 0, "generations": 2,
        "data": {"corpus": str(corpus), "train_split": "train", "heldout_split": "test",
                 "block_size": 16, "max_train_blocks": 24, "max_heldout_blocks": 12},
        "model": {"name": "tiny-opt", "vocab_size": 300, "hidden_size": 16, "num_layers": 1,
                  "num_heads": 2, "ffn_dim": 32, "max_positions": 64},
        "pretrain": {"corpus": None},  # fresh weights: one second per generation
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3.0e-3, "min_learning_rate": 1.0e-4,
                  "checkpoint_every": 2, "keep_checkpoints": 2},
        "generate": {"num_beams": 1, "do_sample": True, "repetition_penalty": 1.0,
                     "min_new_tokens": 8, "max_new_tokens": 8, "prompt_tokens": 8, "batch_size": 8,
                     "shard_size": 10},
        "evaluate": {"window": 16, "stride": 8, "batch_size": 8, "self_bleu_samples": 10},
    }
    for key, value in parse_overrides(overrides or []).items():
        set_dotted(raw, key, value)
    return raw


def micro_config(corpus: Path, overrides: list[str] | None = None) -> PipelineConfig:
    return build_config(micro_raw_config(corpus, overrides))


def build_quietly(config: PipelineConfig, run_root: Path, last_generation: int, **options) -> list[dict]:
    """``build`` without progress bars or the printed table: generations 0..last of the run."""
    from lmcollapse.stages.pipeline import build

    return build(config, run_root, last_generation, progress=False, echo=lambda _: None, **options)


def micro_run(folder: Path, corpus: Path, overrides: list[str] | None = None, last_generation: int = 1,
              name: str = "run") -> tuple[RunDir, PipelineConfig]:
    """A micro run built in ``folder / name`` (generations 0..last) and its config."""
    config = micro_config(corpus, overrides)
    run = RunDir(folder / name)
    build_quietly(config, run.root, last_generation)
    return run, config


def write_pipeline(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file under ``root``: equal iff nothing was rewritten."""
    return {
        p.relative_to(root).as_posix(): (sha256_file(p), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def tree_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock" and not any(part in skip for part in p.relative_to(root).parts)
    }


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m lmcollapse ...`` in a new process (the real entry point, exit codes included):
    forked from the tests' fork server where the environment allows (tests/forkserver.py)."""
    full_env = {**os.environ, **(env or {})}
    server = fork_server()
    if server is not None:
        drifted = [key for key in server.differences(full_env) if key not in (env or {})]
        if drifted:  # not what the test asked for: the session's environment changed under it
            warnings.warn(f"the fork server ran `lmcollapse {' '.join(args[:2])}` alone: {drifted} changed in this "
                          "test process since the session began (tests/forkserver.py: RUNTIME_VARIABLES)", stacklevel=2)
        result = server.run(list(args), cwd or REPO, full_env, timeout)
        if result is not None:
            return result
    return run_cli_alone(*args, cwd=cwd, timeout=timeout, env=full_env)


def run_cli_alone(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``run_cli`` in a process started from nothing, never forked."""
    # A session of its own: a failpoint may SIGKILL the command's whole process group.
    return subprocess.run([sys.executable, "-m", "lmcollapse", *args], cwd=cwd or REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)


@functools.cache
def fork_server():
    from forkserver import ForkServer

    return ForkServer(REPO, _SESSION_ENV) if os.environ.get("LMCOLLAPSE_TEST_FORKSERVER", "1") != "0" else None


# The environment conftest.py set up, before any test changed it: the fork server's.
_SESSION_ENV = dict(os.environ)


MODEL_LIBRARIES = ("torch", "transformers", "datasets", "accelerate")
_REPORTING_LOADED = ("import sys; from lmcollapse.cli import main; code = main(sys.argv[1:]); "
                     f"print('loaded:', sorted(set({MODEL_LIBRARIES!r}) & set(sys.modules))); sys.exit(code)")


def run_cli_light(*args: str) -> subprocess.CompletedProcess:
    """``run_cli`` for a command that only reads and writes files (a status, a config, a study's
    coordinator): asserts it loaded none of the model libraries, each seconds to import."""
    result = subprocess.run([sys.executable, "-c", _REPORTING_LOADED, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=600, start_new_session=True)
    head, _, loaded = result.stdout.rstrip("\n").rpartition("\n")
    assert loaded == "loaded: []", (args, result.stdout[-500:], result.stderr[-2000:])
    result.stdout = head + "\n"
    return result


def write_generated_corpus(folder: Path, seed: int = 0) -> Path:
    """A small corpus folder (train.txt, test.txt) in WikiText-2's raw format, generated here:
    ``= Heading =`` lines, blank lines and paragraphs of Zipf-distributed words, numbers and
    punctuation. Different articles in each split. The mechanics tests run on it, so they need no
    external corpus; the tests on the real WikiText-2 ask for the ``data_dir`` fixture."""
    import numpy as np

    rng = np.random.default_rng(seed)
    onsets, vowels, codas = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr"], \
        ["a", "e", "i", "o", "u", "ea", "ou"], ["", "n", "r", "s", "t", "nd", "ll"]
    words = sorted({"".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                            for _ in range(rng.integers(1, 4))) for _ in range(900)})
    rank = np.argsort(rng.random(len(words)))  # which word is frequent: a fixed random order

    def sentence() -> str:
        picks = np.minimum(rng.zipf(1.15, size=rng.integers(6, 22)), len(words)) - 1
        tokens = [words[rank[p]] for p in picks]
        if rng.random() < 0.3:
            tokens.insert(int(rng.integers(0, len(tokens))), str(int(rng.integers(1800, 2020))))
        if rng.random() < 0.2:
            tokens.insert(int(rng.integers(1, len(tokens))), ",")
        return " ".join(tokens).capitalize() + " ."

    def article(lines: int) -> list[str]:
        out = [" \n", f" = {words[rank[int(rng.integers(0, 200))]].title()} {words[rank[int(rng.integers(0, 200))]]} = \n", " \n"]
        while len(out) < lines:
            out += [" " + " ".join(sentence() for _ in range(rng.integers(3, 8))) + " \n", " \n"]
        return out

    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.txt", 260), ("test.txt", 160)):
        lines: list[str] = []
        while len(lines) < count:
            lines += article(int(rng.integers(12, 40)))
        (folder / name).write_text("".join(lines[:count]), encoding="utf-8")
    return folder


def micro_opt(vocab_size: int = 40, layers: int = 1, positions: int = 64, dropout: float = 0.1, seed: int = 0):
    """A random OPT of width 16 built from config (pad 1, </s> 2 as BOS and EOS, like OPT's
    tokenizer), seeded: the same call gives the same weights."""
    import torch
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(OPTConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=layers, ffn_dim=32, num_attention_heads=2,
        max_position_embeddings=positions, word_embed_proj_dim=16, dropout=dropout,
        pad_token_id=1, bos_token_id=2, eos_token_id=2))


class SingleProcess:
    """What the stages ask of an ``accelerate.Accelerator`` in a one-process CPU run."""

    num_processes, process_index, is_main_process = 1, 0, True

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass

    def autocast(self):
        import torch

        return torch.autocast("cpu", enabled=False)


def token_records(token_lists: list[list[int]], source: str = "human", generation: int | None = None,
                  ids: list[str] | None = None, text: str = ""):
    """Records (the pipeline's schema, with provenance) holding these token lists."""
    from lmcollapse.data.records import make_records

    count = len(token_lists)
    return make_records({
        "id": ids or [str(i) for i in range(count)], "source": [source] * count, "generation": [generation] * count,
        "parent": [None] * count, "model": [None] * count, "input_ids": [list(map(int, t)) for t in token_lists],
        "text": [text] * count})


# ---------------------------------------------------------------------------- studies

def write_study(folder: Path, corpus: Path, **changes) -> Path:
    """A micro pipeline (micro.yaml) and a study of it in ``folder``: two variants (the grid's
    two training epochs) x two seeds, two generations, runs under ``folder/runs``."""
    write_pipeline(folder / "micro.yaml", micro_raw_config(corpus, ["train.epochs=1"]))
    study = {"name": "micro-study", "pipelines": ["micro.yaml"], "seeds": [0, 1], "generations": 2,
             "grid": {"train.learning_rate": [0.003, 0.001]}, "root": str(folder / "runs"),
             "resources": {"cpus": 1, "memory_gb": 1, "time_minutes": 10}, **changes}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path


def standalone_run(run, folder: Path) -> RunDir:
    """The same run made alone, as a user makes it (one command, one thread)."""
    result = run_cli(*[a if a != str(run.folder) else str(folder) for a in run.argv()],
                     env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return RunDir(folder)


def study_results(run: RunDir) -> dict:
    """What a run computed: every weight, shard, training set and evaluation file, and its metrics
    without the wall times."""
    files = {k: v for k, v in tree_hashes(run.root).items()
             if k.endswith((".safetensors", ".parquet", ".npy")) and "/checkpoints/" not in k}
    with open(run.metrics_csv, encoding="utf-8") as handle:
        rows = [{k: v for k, v in row.items() if k not in VARYING} for row in csv.DictReader(handle)]
    return {"files": files, "metrics": rows}


TIMING = {"seconds", *VARYING}  # a result's own "seconds", and the catalogue's wall-time columns


def without_timing(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if k not in TIMING}


def assert_same_results(reference: RunDir, run: RunDir, generations=(0, 1)) -> None:
    for index in generations:
        ref, got = reference.generation(index), run.generation(index)
        assert got.is_complete
        assert sha256_file(got.model / "model.safetensors") == sha256_file(ref.model / "model.safetensors")
        assert json.loads((got.model / "train_log.json").read_text())["log"] == \
            json.loads((ref.model / "train_log.json").read_text())["log"]
        assert sha256_file(got.train_set) == sha256_file(ref.train_set)
        assert tree_hashes(got.synthetic, skip=()) .keys() == tree_hashes(ref.synthetic).keys()
        for shard in ref.synthetic_shards():
            assert sha256_file(got.synthetic / shard.name) == sha256_file(shard), shard.name
        for name in ("heldout_block_nll.npy", "tails.npy"):
            assert sha256_file(got.eval / name) == sha256_file(ref.eval / name), name
        for name in ("perplexity.json", "text_metrics.json", "tails.json", "mauve.json"):
            assert without_timing(json.loads((got.eval / name).read_text())) == \
                without_timing(json.loads((ref.eval / name).read_text())), name
        assert without_timing(json.loads(got.manifest.read_text())["metrics"]) == \
            without_timing(json.loads(ref.manifest.read_text())["metrics"])
    with open(reference.metrics_csv) as a, open(run.metrics_csv) as b:
        assert [without_timing(r) for r in csv.DictReader(a)] == [without_timing(r) for r in csv.DictReader(b)]
