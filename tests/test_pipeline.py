"""The pipeline end to end on the micro config: stages, skipping, provenance, from_pretrained."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from safetensors.torch import load_file

from helpers import REPO, build_quietly, micro_config, micro_raw_config, tree_hashes, tree_state
from lmcollapse.config import build_config
from lmcollapse.data.records import read_records
from lmcollapse.engine.modeling import load_model, weights_sha256
from lmcollapse.engine.training import train_model
from lmcollapse.run.atomic import sha256_file
from lmcollapse.run.layout import RunDir
from lmcollapse.stages.pipeline import make_accelerator

# End-to-end runs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory, small_corpus):
    """generation-1 built, a snapshot taken, then generation-3 built on the same run."""
    root = tmp_path_factory.mktemp("runs") / "micro"
    config = micro_config(small_corpus)
    build_quietly(config, root, 1)
    before = {name: tree_state(root / name) for name in ("base", "human", "generation-00", "generation-01")}
    build_quietly(config, root, 3)
    return config, RunDir(root), before


def test_generation_3_after_generation_1_builds_only_2_and_3(staged_run):
    config, run, before = staged_run
    for name, state in before.items():
        assert tree_state(run.root / name) == state, f"{name} was rewritten"
    for index in (2, 3):
        generation = run.generation(index)
        assert generation.is_complete
        log = json.loads((generation.model / "train_log.json").read_text())
        assert log["steps"] == config.train.epochs * 3  # 24 blocks, batch 8
    assert [g.index for g in run.complete_generations()] == [0, 1, 2, 3]


def test_run_layout_is_exactly_the_documented_one(staged_run):
    _, run, _ = staged_run
    generation = run.generation(2)
    files = {p.relative_to(generation.root).as_posix() for p in generation.root.rglob("*") if p.is_file()}
    model_files = {f for f in files if f.startswith("model/")}
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/train_log.json",
            "model/generation_config.json", "model/README.md"} <= model_files
    assert files - model_files == {
        "manifest.json", "lineage.json", "train-set.parquet",
        "synthetic/generation_config.json", "synthetic/README.md",
        "synthetic/shard-00000.parquet", "synthetic/shard-00000.json",
        "synthetic/shard-00001.parquet", "synthetic/shard-00001.json",
        "synthetic/shard-00002.parquet", "synthetic/shard-00002.json",
        "eval/perplexity.json", "eval/heldout_block_nll.npy", "eval/text_metrics.json", "eval/tails.json", "eval/tails.npy",
        "eval/mauve.json"}
    assert not generation.checkpoints.exists()  # removed once the model is saved
    top = {p.name for p in run.root.iterdir()}
    assert {"pipeline.yaml", "base", "human", "metrics.csv", "metrics.json"} <= top


def test_a_complete_run_is_not_touched_again(staged_run):
    config, run, _ = staged_run
    state = tree_state(run.root)
    rows = build_quietly(config, run.root, 3)
    assert tree_state(run.root) == state
    assert [r["generation"] for r in rows] == [0, 1, 2, 3]


def test_metrics_table_has_a_finite_row_per_generation(staged_run):
    _, run, _ = staged_run
    with open(run.metrics_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["generation"]) for r in rows] == [0, 1, 2, 3]
    for row in rows:
        for column in ("ppl_blocks", "ppl_sliding", "self_bleu_4", "distinct_2", "tail_ppl_p50", "train_loss"):
            assert math.isfinite(float(row[column])) and float(row[column]) >= 0, column
    summary = json.loads(run.metrics_json.read_text(), parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    assert summary["reference"]["base"]["ppl_blocks"] > 0 and "distinct_1" in summary["reference"]["human"]
    manifest = json.loads(run.generation(1).manifest.read_text())
    assert manifest["metrics"]["ppl_blocks"] == float(rows[1]["ppl_blocks"])
    assert manifest["parent_manifest_sha256"] and manifest["versions"]["torch"]
    assert all(len(h) == 64 for h in manifest["files"].values())


def test_each_generation_trains_on_the_previous_corpus_with_provenance(staged_run):
    _, run, _ = staged_run
    human = read_records(run.root / "human" / "train.parquet")
    assert set(human["source"]) == {"human"} and set(human["generation"]) == {None}
    gen0_corpus = read_records(run.generation(0).synthetic / "shard-00000.parquet")
    gen1_train = read_records(run.generation(1).train_set)
    assert gen1_train["id"][:10] == gen0_corpus["id"]  # replace: generation 1 trains on generation 0's text
    gen1_corpus = read_records(run.generation(1).synthetic / "shard-00000.parquet")
    # The writer is named by content: the sha256 of generation 1's weights file.
    writer = "sha256:" + sha256_file(run.generation(1).model / "model.safetensors")
    for record, parent in zip(gen1_corpus, gen1_train):
        assert record["generation"] == 1 and record["source"] == "synthetic"
        assert record["parent"] == parent["id"] and record["model"] == writer


def test_keep_fraction_mixes_fresh_human_blocks_each_generation(make_micro_run):
    run, config = make_micro_run(["data.regime=keep-fraction", "data.human_fraction=0.25", "train.epochs=1"], 2)
    drawn = []
    for index in (1, 2):
        records = read_records(run.generation(index).train_set)
        sources = list(records["source"])
        assert len(records) == 24 and sources.count("human") == 6 and sources.count("synthetic") == 18
        assert set(records.filter(lambda r: r["source"] == "synthetic")["generation"]) == {index - 1}
        drawn.append({r["id"] for r in records if r["source"] == "human"})
    assert drawn[0] != drawn[1]  # resampled every generation


def test_init_previous_starts_each_generation_from_the_one_before(tmp_path, small_corpus, make_micro_run):
    run, config = make_micro_run(["model.init=previous", "train.epochs=1"], 2, name="previous")
    starts = [json.loads((run.generation(i).model / "train_log.json").read_text())["started_from"] for i in range(3)]
    assert starts == ["base/model", "generation-00/model", "generation-01/model"]
    base = micro_config(small_corpus, ["train.epochs=1"])
    other = RunDir(tmp_path / "base")
    build_quietly(base, other.root, 1)
    assert json.loads((other.generation(1).model / "train_log.json").read_text())["started_from"] == "base/model"
    # Same generation-0 model, different starting points for generation 1: different weights.
    assert (run.generation(0).model / "model.safetensors").read_bytes() == (other.generation(0).model / "model.safetensors").read_bytes()
    assert (run.generation(1).model / "model.safetensors").read_bytes() != (other.generation(1).model / "model.safetensors").read_bytes()


def test_from_pretrained_on_a_saved_local_model(staged_run, tmp_path, small_corpus):
    _, run, _ = staged_run
    config = micro_config(small_corpus, [f"model.name={run.base_model}", "model.vocab_size=null", "model.hidden_size=null",
                                         "model.num_layers=null", "model.num_heads=null", "model.ffn_dim=null",
                                         "model.max_positions=null", "train.epochs=1"])
    new = RunDir(tmp_path / "pretrained")
    build_quietly(config, new.root, 0)
    manifest = json.loads((new.base / "manifest.json").read_text())
    assert manifest["kind"] == "pretrained" and manifest["source"] == str(run.base_model)
    assert new.generation(0).is_complete
    assert (new.base_model / "model.safetensors").read_bytes() == (run.base_model / "model.safetensors").read_bytes()


def test_make_passes_pipeline_run_and_overrides(tmp_path):
    out = subprocess.run(["make", "-n", "generation-3", "PIPELINE=pipelines/tiny.yaml", f"RUN={tmp_path}/r",
                          "SET=train.epochs=1 seed=3"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert f'-m lmcollapse generation 3 --pipeline "pipelines/tiny.yaml" --run "{tmp_path}/r" --set train.epochs=1 seed=3' in out


def test_make_run_writes_the_report_and_puts_seeds_beside_the_single_run():
    def dry(*variables):
        return subprocess.run(["make", "-n", "-o", ".venv/bin/.installed", "run", *variables], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout

    single = dry("PIPELINE=pipelines/tiny-keep10.yaml")
    assert '-m lmcollapse run --pipeline "pipelines/tiny-keep10.yaml" --run "runs/tiny-keep10" ' in single
    assert '-m lmcollapse -q report --run "runs/tiny-keep10" ' in single
    seeds = dry("PIPELINE=pipelines/tiny-keep10.yaml", "SEEDS=0 1 2")
    assert '--run "runs/tiny-keep10-seeds" ' in seeds and "--seeds 0 1 2" in seeds
    assert '-m lmcollapse -q report --run "runs/tiny-keep10-seeds" ' in seeds


def test_the_same_config_in_differently_named_folders_gives_byte_identical_artefacts(staged_run, tmp_path):
    """Nothing a run computes names its folder: shards, models, training sets and evaluations are
    the same bytes wherever the run lives (the manifests differ only in timings and the run name)."""
    config, run, _ = staged_run
    other = RunDir(tmp_path / "a differently named folder" / "elsewhere")
    build_quietly(config, other.root, 1)
    for stage in ("base/model", "human/train.parquet", "human/heldout.parquet", "generation-00", "generation-01"):
        if (run.root / stage).is_file():
            assert sha256_file(other.root / stage) == sha256_file(run.root / stage), stage
            continue
        ours = {k: v for k, v in tree_hashes(run.root / stage).items() if not _records_wall_clock(k)}
        theirs = {k: v for k, v in tree_hashes(other.root / stage).items() if not _records_wall_clock(k)}
        assert theirs == ours, stage
    assert any(k.startswith("synthetic/shard-") for k in ours) and "model/model.safetensors" in ours


def _records_wall_clock(name: str) -> bool:
    """Files that hold timings (seconds) beside the results, so they differ between any two runs."""
    # lineage.json holds the sha256 of the manifests a generation was built on, which hold timings.
    return (name.endswith(("train_log.json", "manifest.json", "lineage.json")) or re.fullmatch(r"eval/.*\.json", name) is not None
            or re.fullmatch(r"synthetic/shard-\d+\.json", name) is not None)


@pytest.mark.parametrize("init", ["base", "previous", "generation-0"])
def test_each_init_mode_starts_from_the_weights_it_claims(tmp_path, small_corpus, make_micro_run, init):
    """Generation k starts from the model ``model.init`` names: training generation
    2's training set from the weights its log names reproduces its weights byte for byte."""
    run, config = make_micro_run([f"model.init={init}", "train.epochs=1"], 2, name=init)
    claimed = {"base": ["base/model", "base/model"], "previous": ["generation-00/model", "generation-01/model"],
               "generation-0": ["generation-00/model", "generation-00/model"]}[init]
    logs = [json.loads((run.generation(i).model / "train_log.json").read_text()) for i in (0, 1, 2)]
    assert [log["started_from"] for log in logs[1:]] == claimed
    # by content: the weights each generation started from are the ones the folder it names holds
    for log, folder in zip(logs, ["base/model", *claimed]):
        assert log["started_from_sha256"] == weights_sha256(run.root / folder)
    assert len({log["started_from_sha256"] for log in logs}) == {"base": 1, "previous": 3, "generation-0": 2}[init]
    start = run.root / claimed[1]
    replay = micro_config(small_corpus, ["train.epochs=1"])
    model, tokenizer = load_model(start)
    train_set = read_records(run.generation(2).train_set)
    trained, _ = train_model(model, [np.asarray(ids, dtype=np.int64) for ids in train_set["input_ids"]],
                             replay.train, seed=replay.seed, generation=2, checkpoint_dir=tmp_path / "replay",
                             accelerator=make_accelerator(replay), data_fingerprint=sha256_file(run.generation(2).train_set),
                             pad_id=tokenizer.pad_token_id, progress=False)
    saved = load_file(run.generation(2).model / "model.safetensors")
    for name, tensor in trained.state_dict().items():
        if name in saved:
            assert (saved[name] == tensor).all(), name


@pytest.mark.parametrize("prompts", ["training-set", "human"])
def test_prompt_source_switch(tmp_path, small_corpus, prompts):
    config = micro_config(small_corpus, [f"generate.prompts={prompts}", "train.epochs=1"])
    run = RunDir(tmp_path / prompts)
    build_quietly(config, run.root, 1)
    human_ids = list(read_records(run.human / "train.parquet")["id"])
    train_ids = list(read_records(run.generation(1).train_set)["id"])
    parents = list(read_records(run.generation(1).synthetic_shards()[0])["parent"])
    # Generation 1 trains on generation 0's text; it continues those blocks, or the human ones.
    assert parents == (train_ids if prompts == "training-set" else human_ids)[:len(parents)]
    assert all(p.startswith("g00-") for p in parents) == (prompts == "training-set")


def test_the_manifest_records_the_batch_the_corpus_was_generated_in(staged_run, tmp_path, small_corpus):
    config, run, _ = staged_run
    assert json.loads(run.generation(1).manifest.read_text())["generate_batch_size"] == config.generate.batch_size == 8
    probed = micro_config(small_corpus, ["generate.sampler=inverse-cdf", "generate.batch_probe=true",
                                         "generate.batch_size=2", "generations=1", "train.epochs=1"])
    other = RunDir(tmp_path / "probed")
    build_quietly(probed, other.root, 0)
    chosen = json.loads((other.generation(0).synthetic / "batch_probe.json").read_text())
    assert [t["batch_size"] for t in chosen["tried"]][0] == 2  # 24 prompts: tries 2 and 4, at most a quarter, 6
    assert max(t["batch_size"] for t in chosen["tried"]) <= 6
    assert json.loads(other.generation(0).manifest.read_text())["generate_batch_size"] == chosen["batch_size"]


def test_best_validation_selects_on_human_blocks_disjoint_from_training_and_heldout(tmp_path, small_corpus):
    config = micro_config(small_corpus, ["train.select=best-validation", "data.max_validation_blocks=8",
                                         "train.epochs=3", "train.learning_rate=3.0e-2"])
    run = RunDir(tmp_path / "select")
    build_quietly(config, run.root, 1)
    train, heldout, validation = (read_records(run.human / f"{name}.parquet") for name in ("train", "heldout", "validation"))
    assert len(validation) == 8
    assert not set(validation["id"]) & set(train["id"]) and not set(validation["id"]) & set(heldout["id"])
    blocks = {tuple(ids) for ids in train["input_ids"]} | {tuple(ids) for ids in heldout["input_ids"]}
    assert not any(tuple(ids) in blocks for ids in validation["input_ids"])
    human = json.loads((run.human / "manifest.json").read_text())
    assert human["validation"]["carved_from_train_split"] and "validation.parquet" in human["files"]
    rows = list(csv.DictReader(open(run.metrics_csv)))
    for index, row in enumerate(rows):
        chosen = json.loads((run.generation(index).model / "train_log.json").read_text())["selection"]
        losses = [v["loss"] for v in chosen["validation_losses"]]
        assert chosen["epoch"] == int(np.argmin(losses)) and len(losses) == 3
        assert int(row["train_epoch_kept"]) == chosen["epoch"] and float(row["train_val_loss"]) == min(losses)


def test_best_validation_with_no_block_left_to_validate_on_is_refused_before_anything_is_written(tmp_path, small_corpus):
    from lmcollapse.errors import LmcollapseError

    config = micro_config(small_corpus, ["train.select=best-validation", "data.max_train_blocks=100000"])
    with pytest.raises(LmcollapseError, match="needs validation blocks, but all .* blocks of the train split are "
                                              "training blocks: set data.max_train_blocks below"):
        build_quietly(config, tmp_path / "none", 0)
    assert not (tmp_path / "none").exists()


def test_a_local_model_is_refused_where_prompts_and_new_tokens_pass_its_positions(staged_run, tmp_path, small_corpus):
    from lmcollapse.errors import LmcollapseError

    _, run, _ = staged_run
    folder = tmp_path / "short-model"
    shutil.copytree(run.base_model, folder)
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**settings, "max_position_embeddings": 12}))
    raw = micro_raw_config(small_corpus)
    raw["model"] = {"name": str(folder)}
    raw["pretrain"] = {"corpus": "auto"}
    with pytest.raises(LmcollapseError, match=r"prompt \(8\) \+ new tokens \(8\) = 16 exceeds the 12 positions the base "
                                              r"was trained on \(max_position_embeddings of .*short-model\)"):
        build_quietly(build_config(raw), tmp_path / "refused", 0)
    assert not (tmp_path / "refused").exists()


def test_pretraining_on_the_text_it_is_fine_tuned_on_is_refused_before_anything_runs(tmp_path):
    from lmcollapse.config import load_config
    from lmcollapse.errors import LmcollapseError

    # The raw and the tokenized WikiText-2 are two releases of the same articles.
    config = load_config(REPO / "pipelines" / "tiny.yaml", ["data.train_split=train", "data.validation_split=validation",
                                                                    "data.mixed_sources=true"])
    with pytest.raises(LmcollapseError, match=r"pretrain.split: the train split of wikitext-2-v1 holds the same text "
                                              r"as data.train_split \(train of wikitext-2-raw-v1\)"):
        build_quietly(config, tmp_path / "overlap", 0)
    assert not (tmp_path / "overlap").exists()


def test_every_column_of_metrics_csv_has_a_definition(staged_run, tmp_path, small_corpus):
    from lmcollapse.metrics import COLUMNS

    _, run, _ = staged_run
    selected = RunDir(tmp_path / "selected")
    build_quietly(micro_config(small_corpus, ["train.select=best-validation", "data.max_validation_blocks=4", "train.epochs=1",
                                      "data.regime=keep-fraction", "data.human_fraction=0.25", "decontaminate.enabled=true"]),
          selected.root, 1)
    for folder in (run, selected):
        columns = next(csv.reader(open(folder.metrics_csv)))
        undefined = [c for c in columns if c not in COLUMNS or not COLUMNS[c].definition]
        assert not undefined, f"columns without a definition: {undefined}"
    assert {"train_epoch_kept", "train_val_loss", "decontam_precision"} <= set(next(csv.reader(open(selected.metrics_csv))))
