"""The pretrained base: pretrained once, cached by content, reused (hit), redone (miss), resumed."""

from __future__ import annotations

import json

import pytest

from helpers import build_quietly, micro_config, micro_raw_config, run_cli, tree_hashes, tree_state, write_pipeline
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import sha256_file
from lmcollapse.run.layout import RunDir
from lmcollapse.run.manifests import read_manifest
from lmcollapse.stages.base_cache import locate_entry
from lmcollapse.views.plan import describe_plan

# End-to-end runs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrain_corpus(tmp_path_factory, data_dir):
    """A corpus folder whose train split is the first lines of the tokenized WikiText-2 train split:
    other articles than the raw validation and test lines the micro runs fine-tune and evaluate on."""
    folder = tmp_path_factory.mktemp("pretrain-corpus")
    source = data_dir / "wikitext-2-raw" / "tokenized-fallback-wikitext-2-v1" / "wiki.train.tokens"
    with open(source, encoding="utf-8") as handle:
        (folder / "train.txt").write_text("".join(handle.readline() for _ in range(300)), encoding="utf-8")
    return folder


def pretrained_overrides(folder, *more):
    """The micro pretraining settings, ``more`` replacing any of them (a key may be given once)."""
    settings = [f"pretrain.corpus={folder}", "pretrain.split=train", "pretrain.block_size=16", "pretrain.max_blocks=64",
                "pretrain.epochs=2", "pretrain.batch_size=8", "pretrain.learning_rate=3.0e-3",
                "pretrain.min_learning_rate=1.0e-4", "pretrain.warmup_steps=2", "pretrain.checkpoint_every=2"]
    replaced = {override.partition("=")[0] for override in more}
    return [s for s in settings if s.partition("=")[0] not in replaced] + list(more)


def quiet_build(config, root, last=0):
    return build_quietly(config, root, last)


def test_a_miss_pretrains_once_and_a_hit_reuses_it_for_other_runs_and_seeds(tmp_path, monkeypatch, small_corpus,
                                                                            pretrain_corpus):
    monkeypatch.setenv("LMCOLLAPSE_CACHE_DIR", str(tmp_path / "cache"))
    config = micro_config(small_corpus, pretrained_overrides(pretrain_corpus))
    entry = locate_entry(config)
    assert not entry.root.exists()
    first = RunDir(tmp_path / "first")
    assert f"pretrained base: {entry.root} (not cached yet: pretrained first)" in describe_plan(config, first, 0)
    quiet_build(config, first.root)
    assert f"pretrained base: {entry.root} (cached, reused)" in describe_plan(config, RunDir(tmp_path / "next"), 0)
    assert entry.is_complete and sorted(p.name for p in entry.root.iterdir()) == ["manifest.json", "model"]
    recorded = read_manifest(entry.manifest)
    assert recorded["key"] == entry.key and recorded["blocks"] == 64 and recorded["steps"] == 2 * 64 // 8
    # The run keeps a byte-for-byte copy, and says where it came from.
    assert tree_hashes(first.base_model) == tree_hashes(entry.model)
    base = read_manifest(first.base / "manifest.json")
    assert base["kind"] == "pretrained-preset" and base["pretrained"]["key"] == entry.key
    assert base["pretrained"]["entry_manifest_sha256"] == recorded["manifest_sha256"]
    # Generation 0 fine-tunes the pretrained weights.
    log = json.loads((first.generation(0).model / "train_log.json").read_text())
    assert log["started_from"] == "base/model"
    assert log["started_from_sha256"] == sha256_file(entry.model / "model.safetensors")

    cached = tree_state(tmp_path / "cache")
    other = RunDir(tmp_path / "another name")
    quiet_build(micro_config(small_corpus, pretrained_overrides(pretrain_corpus, "seed=1")), other.root)
    assert tree_state(tmp_path / "cache") == cached  # a hit: nothing pretrained or rewritten
    assert tree_hashes(other.base_model) == tree_hashes(first.base_model)


def test_pretraining_makes_a_better_zero_shot_base_than_fresh_weights(tmp_path, monkeypatch, small_corpus, pretrain_corpus):
    monkeypatch.setenv("LMCOLLAPSE_CACHE_DIR", str(tmp_path / "cache"))
    pretrained, fresh = RunDir(tmp_path / "pretrained"), RunDir(tmp_path / "fresh")
    quiet_build(micro_config(small_corpus, pretrained_overrides(pretrain_corpus)), pretrained.root)
    quiet_build(micro_config(small_corpus), fresh.root)
    zero_shot = read_manifest(pretrained.base / "eval.json")["ppl_blocks"]
    assert zero_shot < 0.8 * read_manifest(fresh.base / "eval.json")["ppl_blocks"]
    # the base row of the table is the pretrained model's zero-shot held-out perplexity
    assert json.loads(pretrained.metrics_json.read_text())["reference"]["base"]["ppl_blocks"] == zero_shot


def test_the_cache_key_is_the_content_that_decides_the_weights(small_corpus, pretrain_corpus, tmp_path):
    key = locate_entry(micro_config(small_corpus, pretrained_overrides(pretrain_corpus))).root
    same = locate_entry(micro_config(small_corpus, pretrained_overrides(pretrain_corpus, "pretrain.checkpoint_every=7",
                                                                         "seed=5", "train.epochs=3"))).root
    assert same == key  # how often it checkpoints, the run's seed and fine-tuning do not change the base
    for change in ("pretrain.epochs=3", "pretrain.seed=1", "pretrain.max_blocks=32", "model.hidden_size=32",
                   "model.vocab_size=280"):
        assert locate_entry(micro_config(small_corpus, pretrained_overrides(pretrain_corpus, change))).root != key, change
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "train.txt").write_text((pretrain_corpus / "train.txt").read_text() + " one more line\n")
    assert locate_entry(micro_config(small_corpus, pretrained_overrides(edited))).root != key  # the corpus's sha256


def test_interrupted_pretraining_resumes_to_the_same_base(tmp_path, small_corpus, pretrain_corpus):
    pipeline = write_pipeline(tmp_path / "micro.yaml", micro_raw_config(small_corpus, pretrained_overrides(pretrain_corpus)))
    killed_cache, clean_cache = tmp_path / "killed-cache", tmp_path / "clean-cache"
    args = ("generation", "0", "--pipeline", str(pipeline), "--no-progress")
    killed = run_cli(*args, "--run", str(tmp_path / "run"), env={
        "LMCOLLAPSE_CACHE_DIR": str(killed_cache), "LMCOLLAPSE_FAILPOINT": "train-step@11=killpg"})
    assert killed.returncode != 0
    (entry_root,) = [p for p in (killed_cache / "pretrained").iterdir() if p.is_dir()]
    assert not (entry_root / "manifest.json").exists() and (entry_root / "checkpoints" / "step-000010").is_dir()
    resumed = run_cli(*args, "--run", str(tmp_path / "run"), env={"LMCOLLAPSE_CACHE_DIR": str(killed_cache),
                                                                   "LMCOLLAPSE_FAILPOINT": ""})
    assert resumed.returncode == 0, resumed.stderr
    assert read_manifest(entry_root / "manifest.json")["resumed_from_step"] == 10
    clean = run_cli(*args, "--run", str(tmp_path / "clean"), env={"LMCOLLAPSE_CACHE_DIR": str(clean_cache),
                                                                 "LMCOLLAPSE_FAILPOINT": ""})
    assert clean.returncode == 0, clean.stderr
    (clean_root,) = [p for p in (clean_cache / "pretrained").iterdir() if p.is_dir()]
    assert clean_root.name == entry_root.name
    assert tree_hashes(entry_root / "model") == tree_hashes(clean_root / "model")
    for name in ("model/model.safetensors", "synthetic/shard-00000.parquet", "eval/perplexity.json"):
        if name.endswith(".json"):  # the numbers, not the timings
            values = [json.loads((tmp_path / r / "generation-00" / name).read_text()) for r in ("run", "clean")]
            assert [v["ppl_blocks"] for v in values][0] == [v["ppl_blocks"] for v in values][1]
        else:
            assert sha256_file(tmp_path / "run" / "generation-00" / name) == sha256_file(tmp_path / "clean" / "generation-00" / name)


def test_a_damaged_cache_entry_is_refused_with_the_command_that_mends_it(tmp_path, monkeypatch, small_corpus,
                                                                        pretrain_corpus):
    monkeypatch.setenv("LMCOLLAPSE_CACHE_DIR", str(tmp_path / "cache"))
    config = micro_config(small_corpus, pretrained_overrides(pretrain_corpus))
    quiet_build(config, tmp_path / "first")
    entry = locate_entry(config)
    weights = entry.model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(LmcollapseError, match=f"changed since it was pretrained: rm -r {entry.root}"):
        quiet_build(config, tmp_path / "second")
    assert not (tmp_path / "second").exists()  # nothing half-made left behind
    # the run already made from it is complete and untouched
    assert (tmp_path / "first" / "generation-00" / "manifest.json").is_file()


def test_a_chain_pretrains_each_preset_family_once_and_its_runs_copy_them(tmp_path, monkeypatch, small_corpus,
                                                                          pretrain_corpus):
    """`lmcollapse pretrain` on a model.chain pipeline pretrains every preset family's base (what a
    study does first); a run of the chain then copies each from the cache, byte for byte."""
    monkeypatch.setenv("LMCOLLAPSE_CACHE_DIR", str(tmp_path / "cache"))
    overrides = pretrained_overrides(pretrain_corpus, "model.chain=[tiny-opt, tiny-llama]", "model.init=generation-0")
    pipeline = write_pipeline(tmp_path / "chain.yaml", micro_raw_config(small_corpus, overrides))
    result = run_cli("-q", "pretrain", "--pipeline", str(pipeline), "--no-progress",
                     env={"LMCOLLAPSE_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    config = micro_config(small_corpus, overrides)
    entries = [locate_entry(config.for_family(name)) for name in ("tiny-opt", "tiny-llama")]
    assert all(entry.is_complete for entry in entries) and entries[0].key != entries[1].key
    assert [line.split(" pretrained base: ")[0] for line in result.stdout.splitlines()] == ["tiny-opt", "tiny-llama"]
    cached = tree_state(tmp_path / "cache")
    run = RunDir(tmp_path / "run")
    quiet_build(config, run.root, 1)
    assert tree_state(tmp_path / "cache") == cached  # both hits
    for folder, entry in zip((run, run.family(1)), entries):
        assert read_manifest(folder.base_manifest)["pretrained"]["key"] == entry.key
        assert tree_hashes(folder.base_model) == tree_hashes(entry.model)


def test_the_base_depends_on_the_process_count_only_while_its_micro_batch_is_not_fixed(small_corpus, pretrain_corpus,
                                                                                       monkeypatch):
    """What the README's scaling section says: with pretrain.micro_batch_size null, each process
    takes batch_size / processes, so a 2-process launch pretrains (and caches) a base of its own;
    with it set, 1 and 2 processes share one base."""
    def key(*overrides: str, processes: int) -> str:
        monkeypatch.setenv("WORLD_SIZE", str(processes))
        return locate_entry(micro_config(small_corpus, pretrained_overrides(pretrain_corpus, *overrides))).key

    assert key(processes=1) != key(processes=2)
    assert key("pretrain.micro_batch_size=4", processes=1) == key("pretrain.micro_batch_size=4", processes=2)
