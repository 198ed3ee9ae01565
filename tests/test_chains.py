"""Collapse across model families (model.chain): generation k is trained in chain[k], text crosses
a family boundary as text, and the run stays resumable, checked and labelled by family."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from helpers import (
    assert_same_results,
    build_quietly,
    micro_config,
    micro_raw_config,
    run_cli,
    tree_hashes,
    write_pipeline,
)
from lmcollapse.config import build_config
from lmcollapse.data.records import make_records, read_records
from lmcollapse.data.retokenize import retokenized
from lmcollapse.engine.modeling import load_tokenizer, train_bpe_tokenizer
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.table import format_table
from lmcollapse.report import write_report
from lmcollapse.run.integrity import COMPLETE, DAMAGED, verify_run
from lmcollapse.run.layout import RunDir, family_position
from lmcollapse.stages.generate import read_synthetic
from lmcollapse.views.status import describe_status

CHAIN = ["model.chain=[tiny-opt, tiny-llama, tiny-gpt2]"]
FAMILIES = ["tiny-opt", "tiny-llama", "tiny-gpt2", "tiny-gpt2"]


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, small_corpus):
    """Four generations of a three-family chain, accumulating, filtered by the classifier with the
    scored detectors measured (the scorer is the previous generation, of another family)."""
    overrides = CHAIN + ["model.init=generation-0", "data.regime=accumulate", "decontaminate.enabled=true",
                         "decontaminate.detector=classifier", "decontaminate.measure=[perplexity, fast-detectgpt]",
                         "decontaminate.labelled_fraction=0.5"]
    config = micro_config(small_corpus, overrides)
    run = RunDir(tmp_path_factory.mktemp("chain") / "run")
    rows = build_quietly(config, run.root, 3)
    return run, config, rows


@pytest.fixture(scope="module")
def replace_chain(tmp_path_factory, small_corpus):
    """Generations 0..2 of a three-family chain in the replace regime, uninterrupted, and its raw config."""
    raw = micro_raw_config(small_corpus, CHAIN + ["model.init=generation-0"])
    run = RunDir(tmp_path_factory.mktemp("replace-chain") / "reference")
    build_quietly(build_config(raw), run.root, 2)
    return run, raw


@pytest.mark.slow
def test_a_three_family_chain_end_to_end(chain_run):
    run, config, rows = chain_run
    assert [row["family"] for row in rows] == FAMILIES
    # One base and one set of human blocks per family, each tokenized by its own tokenizer.
    folders = [run, run.family(1), run.family(2)]
    assert [f.name for f in run.families_on_disk()] == ["family-01", "family-02"]
    for folder, family in zip(folders, FAMILIES):
        base = json.loads(folder.base_manifest.read_text())
        assert base["source"] == family
        assert json.loads((folder.base_model / "config.json").read_text())["model_type"] == \
            {"tiny-opt": "opt", "tiny-llama": "llama", "tiny-gpt2": "gpt2"}[family]
        assert (folder.base / "eval.json").is_file() and folder.human_manifest.is_file()
    texts = [read_records(f.human_heldout)["text"] for f in folders]
    ids = [read_records(f.human_heldout)["input_ids"] for f in folders]
    assert ids[0] != ids[1] and texts[0][0].strip()[:20] == texts[1][0].strip()[:20]  # same text, other tokens
    # model.init=generation-0: each family's first generation starts from its base, later ones from it.
    started = [json.loads(run.generation(k).train_log.read_text())["started_from"] for k in range(4)]
    assert started == ["base/model", "family-01/base/model", "family-02/base/model", "generation-02/model"]
    # Every stage, the families' included, is intact.
    checks = {c.name: c.state for c in verify_run(run)}
    assert {name for name in checks if name.startswith("family-")} == \
        {"family-01-base", "family-01-human", "family-02-base", "family-02-human"}
    assert set(checks.values()) == {COMPLETE}
    text, healthy = describe_status(run)
    assert healthy and "family-01-base complete" in text and "family-02-human complete" in text
    # Cards name the run (one label for every generation and family) and each generation's family.
    label = config.fingerprint()[:12]
    card = (run.generation(1).model / "README.md").read_text()
    assert f"# Generation 1 of lmcollapse run {label}" in card and "A `tiny-llama` model" in card
    human_card = (run.family(2).human / "README.md").read_text()
    assert f"run {label}" in human_card and "by the tiny-gpt2 tokenizer" in human_card
    # Bits per byte everywhere; decontamination measured every detector at every boundary.
    assert all(0 < row["bits_per_byte"] < 16 for row in rows)
    for k in (1, 2, 3):
        report = json.loads(run.generation(k).decontamination.read_text())
        assert set(report["detectors"]) == {"classifier", "perplexity", "fast-detectgpt"}


@pytest.mark.slow
def test_text_crosses_a_family_boundary_as_text(replace_chain, chain_run):
    run = replace_chain[0]
    llama = load_tokenizer(run.family(1).base_model)
    writer = read_synthetic(run.generation(0))
    train_set = read_records(run.generation(1).train_set)
    by_id = {rid: i for i, rid in enumerate(train_set["id"])}
    # The writer's records are re-encoded by the reader, with their provenance (id, generation,
    # writer model, parent) kept; their ids decode to the writer's text.
    # A text the reader needs more tokens for than the longest record (here: 16) keeps its first 16.
    assert sorted(train_set["id"]) == sorted(writer["id"])
    whole = 0
    for record in writer:
        mine = train_set[by_id[record["id"]]]
        assert (mine["generation"], mine["model"], mine["parent"]) == (0, record["model"], record["parent"])
        full = llama(record["text"], add_special_tokens=False)["input_ids"]
        assert mine["input_ids"] == full[:16]
        assert mine["text"] == llama.decode(mine["input_ids"], skip_special_tokens=True)
        if len(full) <= 16:
            assert mine["text"] == record["text"]
            whole += 1
    assert whole >= len(writer) // 2
    # The shards keep the writer's own ids and text.
    assert writer["input_ids"] != [train_set[by_id[rid]]["input_ids"] for rid in writer["id"]]
    # Tails are scored under generation 0's model in its own tokens: one value per record.
    assert len(np.load(run.generation(2).tails_values)) == len(read_synthetic(run.generation(2)))
    # Where human data is kept, the human records are the reader's own blocks.
    mixed = chain_run[0]
    reader_human = set(read_records(mixed.family(1).human_train)["id"])
    kept = read_records(mixed.generation(1).train_set)
    assert {rid for rid, source in zip(kept["id"], kept["source"]) if source == "human"} <= reader_human


@pytest.mark.slow
def test_the_tables_and_the_report_label_each_generation_with_its_family(chain_run, tmp_path):
    run, _, rows = chain_run
    printed = format_table(rows)
    for k, family in enumerate(FAMILIES):
        assert f"{k} ({family})" in printed
    out = write_report(run.root, tmp_path / "report")
    markdown = (out / "metrics.md").read_text()
    for k, family in enumerate(FAMILIES):
        assert f"| {k} ({family}) |" in markdown
    assert [g["family"] for g in json.loads((out / "metrics.json").read_text())["groups"][0]["generations"]] == FAMILIES


@pytest.mark.slow
def test_a_damaged_family_stops_the_generation_that_reads_it(chain_run, tmp_path):
    import shutil

    run, config, _ = chain_run
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(run.root, copy.root)
    (copy.family(1).human_train).write_bytes(b"not parquet")
    check = {c.name: c for c in verify_run(copy)}["family-01-human"]
    assert check.state == DAMAGED
    # The fix removes the family's stage and rebuilds the run (not the family folder as a run).
    removal, rebuild = check.fix.split(" && ")
    assert removal == f"rm -r {copy.family(1).human}" and "family-01" not in rebuild and str(copy.root) in rebuild
    shutil.rmtree(copy.generation(3).root)
    with pytest.raises(Exception, match="family-01"):
        build_quietly(config, copy.root, 3)


def test_retokenized_records_keep_their_provenance_and_decode_to_the_text(tmp_path):
    tokenizer = train_bpe_tokenizer(["the cat sat on the mat", "a b x y"] * 20, 300, 64, "llama")
    texts = ["the cat sat on the mat", "a b", "x " * 40]
    records = make_records({"id": ["g00-1", "g00-2", "g00-3"], "source": ["synthetic"] * 3, "generation": [0] * 3,
                            "parent": ["human-train-1", "human-train-2", "human-train-3"],
                            "model": ["sha256:ab"] * 3, "input_ids": [[1], [2], [3]], "text": texts})
    out = retokenized(records, tokenizer, max_tokens=12)
    for column in ("id", "source", "generation", "parent", "model"):
        assert out[column] == records[column]
    for text, ids, decoded in zip(texts, out["input_ids"], out["text"]):
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == full[:12] and tokenizer.decode(ids, skip_special_tokens=True) == decoded
    assert out["text"][:2] == texts[:2]  # not cut: the writer's text itself
    assert len(out["input_ids"][2]) == 12  # cut to the longest record


@pytest.mark.slow
def test_a_chain_killed_anywhere_resumes_in_another_folder_byte_identical(replace_chain, tmp_path):
    reference, raw = replace_chain
    pipeline = write_pipeline(tmp_path / "chain.yaml", raw)
    run = RunDir(tmp_path / "elsewhere" / "resumed")

    def lmc(failpoint: str = ""):
        return run_cli("-q", "generation", "2", "--pipeline", str(pipeline), "--run", str(run.root), "--no-progress",
                       env={"LMCOLLAPSE_FAILPOINT": failpoint})

    # Killed while writing the further families' bases and human blocks (family-01's base manifest
    # is the third written, its human one the second after a restart), then in every step of
    # generations 0 and 1 (training, corpus, evaluation) and in generation 2's training: counts
    # restart in every process, so each point is the next one the resumed process reaches.
    for point in ["write:manifest.json@3", "write:manifest.json@2"] + \
            ["train-step@2", "generate-batch@2", "eval-batch@2"] * 2 + ["train-step@2"]:
        result = lmc(point)
        assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr[-2000:])
    result = lmc()
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_results(reference, run, generations=(0, 1, 2))
    for position in (1, 2):  # every file of the families' bases and human blocks; the manifests' records
        mine, theirs = run.family(position), reference.family(position)
        assert tree_hashes(mine.root, skip=("manifest.json",)) == tree_hashes(theirs.root, skip=("manifest.json",))
        for manifest in ("base/manifest.json", "human/manifest.json"):
            assert json.loads((mine.root / manifest).read_text())["files"] == \
                json.loads((theirs.root / manifest).read_text())["files"]


@pytest.mark.parametrize("overrides, message", [
    (CHAIN + ["model.init=previous"], "model.init: previous cannot start generation 1 (tiny-llama)"),
    (["model.chain=[tiny-llama, tiny-opt]", "model.name=tiny-opt"], "model.chain: starts with tiny-llama"),
    (["model.chain=[tiny-opt]"], "model.chain: must list at least two models"),
    (CHAIN + ["data.regime=accumulate", "decontaminate.enabled=true", "generate.watermark=true",
              "decontaminate.detector=watermark"], "decontaminate.detector: watermark needs one vocabulary"),
    (CHAIN + ["data.regime=accumulate", "decontaminate.enabled=true", "generate.watermark=true",
              "decontaminate.measure=[watermark]"], "decontaminate.measure: watermark needs one vocabulary"),
    (CHAIN + ["data.max_train_blocks=null"], "data.max_train_blocks: is null, but with model.chain"),
])
def test_impossible_chains_are_refused_in_one_line(small_corpus, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as err:
        micro_config(small_corpus, overrides)
    assert "\n" not in str(err.value)


def test_a_chain_entry_that_is_not_a_model_stops_before_anything_runs(small_corpus, tmp_path):
    pipeline = write_pipeline(tmp_path / "chain.yaml",
                              micro_raw_config(small_corpus, ["model.chain=[tiny-opt, ./no-such-model]"]))
    run = tmp_path / "run"
    result = run_cli("-q", "generation", "1", "--pipeline", str(pipeline), "--run", str(run), "--no-progress")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.chain: no model folder at no-such-model" in lines[0], result.stderr
    assert not run.exists()


def test_a_chain_without_a_name_takes_its_first_entry(small_corpus):
    raw = micro_raw_config(small_corpus, ["model.chain=[tiny-llama, tiny-opt]"])
    del raw["model"]["name"]
    config = build_config(raw)
    assert config.model.name == "tiny-llama"
    assert [config.model.entry_at(k) for k in range(4)] == ["tiny-llama", "tiny-opt", "tiny-opt", "tiny-opt"]
    assert config.family_at(3).model.name == "tiny-opt" and config.family_at(3).model.chain is None


@pytest.mark.slow
def test_a_chain_into_a_pretrained_model_folder(tmp_path, small_corpus):
    """A chain entry that is a model folder (loaded with from_pretrained, its own vocabulary): the
    shape overrides shape the preset only, and the folder's model is the family's base."""
    from lmcollapse.config import ModelConfig
    from lmcollapse.engine.modeling import build_preset_model, save_model

    tokenizer = train_bpe_tokenizer(["the cat sat on the mat", "a dog ran in the park"] * 30, 280, 64, "gpt2")
    folder = tmp_path / "my-gpt2"
    shape = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32, "max_positions": 64}
    save_model(build_preset_model(ModelConfig(name="tiny-gpt2", vocab_size=280, **shape), tokenizer, seed=0),
               tokenizer, folder)
    config = micro_config(small_corpus, [f"model.chain=[tiny-opt, {folder}]", "model.init=generation-0"])
    assert config.for_family(str(folder)).model.vocab_size is None
    run = RunDir(tmp_path / "run")
    rows = build_quietly(config, run.root, 2)
    assert [row["family"] for row in rows] == ["tiny-opt", str(folder), str(folder)]
    base = json.loads(run.family(1).base_manifest.read_text())
    assert base["kind"] == "pretrained" and base["vocab_size"] == len(tokenizer)
    assert json.loads(run.generation(2).train_log.read_text())["started_from"] == "generation-01/model"


def test_family_folders_are_found_by_their_names_alone(tmp_path):
    # Only the names RunDir.family writes count as families, in chain order; any other folder
    # beside them (notes, a copy) is ignored rather than breaking the listing.
    run = RunDir(tmp_path)
    for name in ("family-02", "family-01", "family-notes", "family-", "family-²"):
        (tmp_path / name).mkdir()
    (tmp_path / "family-03").write_text("a file, not a folder")
    assert [f.name for f in run.families_on_disk()] == ["family-01", "family-02"]
    assert [family_position(n) for n in ("family-01", "family-12", "family-notes", "family-", "generation-01")] == \
        [1, 12, None, None, None]
    assert run.family(1).root == tmp_path / "family-01" and run.family(0) == run
