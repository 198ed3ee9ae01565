"""Corpora beyond folders of text files: files of records (JSON lines, JSON, CSV, Parquet) read
through datasets' own builders, one file as the whole train split, splits carved from the train
split, and the one-line errors for records that hold no text."""

from __future__ import annotations

import dataclasses
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import build_quietly, micro_config
from lmcollapse import data as corpus
from lmcollapse.config import build_config
from lmcollapse.errors import ConfigError, LmcollapseError
from lmcollapse.run.layout import RunDir

WORDS = "the a river valley song album game battle city army road station church king year".split()


def documents(count: int, seed: int) -> list[str]:
    """Short multi-line documents (a record's text may hold line breaks), each ending with one (as
    every record reads: lmcollapse adds it where it is missing)."""
    import random

    generator = random.Random(seed)
    return [" ".join(generator.choice(WORDS) for _ in range(generator.randint(12, 30))) +
            ("\n" + " ".join(generator.choice(WORDS) for _ in range(5)) if i % 3 == 0 else "") + "\n"
            for i in range(count)]


def write_records(path, texts: list[str], fmt: str) -> None:
    extra = list(range(len(texts)))  # a second, non-text column: only data.text_column is read
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(extra, texts)), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps([{"id": i, "text": t} for i, t in zip(extra, texts)]), encoding="utf-8")
    elif fmt == "csv":
        datasets.Dataset.from_dict({"id": extra, "text": texts}).to_csv(str(path), index=False)
    else:
        pq.write_table(pa.table({"id": extra, "text": texts}), path)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_files_of_records_give_one_row_per_record(tmp_path, fmt):
    train, test = documents(40, 0), documents(12, 1)
    write_records(tmp_path / f"train.{fmt}", train, fmt)
    write_records(tmp_path / f"test.{fmt}", test, fmt)
    source, heldout = corpus.locate_splits(str(tmp_path), "train", "test")
    assert source.structured and source.files == (tmp_path / f"train.{fmt}",)
    assert list(corpus.load_split_lines(source)["text"]) == train
    assert list(corpus.load_split_lines(heldout)["text"]) == test
    record = source.record()
    assert record["text_column"] == "text"
    assert record["format"] == "one row per record, its 'text' field, ending with a line break"


def test_a_split_folder_of_record_files_reads_them_in_order(tmp_path):
    (tmp_path / "train").mkdir()
    parts = [documents(5, seed) for seed in range(3)]
    for index, part in enumerate(parts):
        write_records(tmp_path / "train" / f"part-{index}.jsonl", part, "jsonl")
    (source,) = corpus.locate_splits(str(tmp_path), "train")
    assert list(corpus.load_split_lines(source)["text"]) == [t for part in parts for t in part]


def test_carved_splits_partition_the_train_split(tmp_path):
    texts = documents(100, 0)
    write_records(tmp_path / "stories.jsonl", texts, "jsonl")
    config = build_config({"data": {"corpus": str(tmp_path / "stories.jsonl"), "carve_fraction": 0.1,
                                    "validation_split": "validation"}, "train": {"select": "best-validation"}})
    train, heldout, validation = corpus.locate_data_splits(config, "train", "test", "validation")
    rows = {name: list(corpus.load_split_lines(source)["text"]) for name, source in
            (("train", train), ("test", heldout), ("validation", validation))}
    assert (len(rows["test"]), len(rows["validation"]), len(rows["train"])) == (10, 10, 80)
    assert sorted(rows["train"] + rows["test"] + rows["validation"]) == sorted(texts)
    assert not set(rows["test"]) & set(rows["train"]) and not set(rows["validation"]) & set(rows["test"])
    # the same partition whichever splits a caller asks for (preflight, the human stage, the plan)
    (alone,) = corpus.locate_data_splits(config, "test")
    assert list(corpus.load_split_lines(alone)["text"]) == rows["test"]
    assert heldout.record()["carved"] == {"source_split": "train", "fraction": 0.1, "seed": 0, "part": 0, "parts": 2}
    # another subset_seed carves other rows
    other = build_config({"data": {"corpus": str(tmp_path / "stories.jsonl"), "carve_fraction": 0.1,
                                   "subset_seed": 1, "validation_split": "validation"}})
    assert list(corpus.load_split_lines(corpus.locate_data_splits(other, "test")[0])["text"]) != rows["test"]
    # without best-validation selection no validation split is carved: the train split keeps 90%
    last = build_config({"data": {"corpus": str(tmp_path / "stories.jsonl"), "carve_fraction": 0.1,
                                  "validation_split": "validation"}, "train": {"select": "last"}})
    assert len(corpus.load_split_lines(corpus.locate_data_splits(last, "train")[0])) == 90


def test_bad_records_are_one_line_errors(tmp_path):
    write_records(tmp_path / "train.jsonl", documents(5, 0), "jsonl")
    (source,) = corpus.locate_splits(str(tmp_path), "train", text_column="body")
    with pytest.raises(LmcollapseError, match=r"has no column 'body' \(it has id, text\): set data.text_column"):
        corpus.load_split_lines(source)
    (source,) = corpus.locate_splits(str(tmp_path), "train", text_column="id")
    with pytest.raises(LmcollapseError, match=r"column 'id' of corpus .* is not text; record 1 holds int 0: set data.text_column"):
        corpus.load_split_lines(source)
    (tmp_path / "empty").mkdir()
    write_records(tmp_path / "empty" / "train.jsonl", ["", "  "], "jsonl")
    with pytest.raises(LmcollapseError, match=r"split 'train' is empty"):
        corpus.load_split_lines(corpus.locate_splits(str(tmp_path / "empty"), "train")[0])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train.parquet").write_text("not parquet")
    with pytest.raises(LmcollapseError, match=r"could not be read as parquet .*: check the format matches the suffix"):
        corpus.load_split_lines(corpus.locate_splits(str(tmp_path / "broken"), "train")[0])
    with pytest.raises(corpus.MissingSplit, match=r"no split 'test'.*data.carve_fraction"):
        corpus.locate_splits(str(tmp_path), "test")
    (tmp_path / "mixed" / "train").mkdir(parents=True)
    write_records(tmp_path / "mixed" / "train" / "a.jsonl", documents(3, 0), "jsonl")
    (tmp_path / "mixed" / "train" / "b.txt").write_text("text\n")
    with pytest.raises(LmcollapseError, match=r"mixes file formats .*keep one format per split"):
        corpus.locate_splits(str(tmp_path / "mixed"), "train")
    with pytest.raises(ConfigError, match=r"data.carve_fraction: must be between 0 and 0.5"):
        build_config({"data": {"carve_fraction": 0.7}})
    with pytest.raises(LmcollapseError, match=r"a hub dataset is written hub:owner/name"):
        corpus.locate_splits("hub:just-a-name", "train")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_a_single_file_corpus_with_carved_held_out_text_runs_end_to_end(tmp_path, fmt):
    path = tmp_path / f"corpus.{fmt}"
    write_records(path, documents(300, 0), fmt)
    config = micro_config(path, ["data.carve_fraction=0.1"])
    build_quietly(config, tmp_path / "run", 1)
    run = RunDir(tmp_path / "run")
    manifest = json.loads(run.human_manifest.read_text())
    assert manifest["heldout"]["provenance"]["carved"]["part"] == 0 and "carved from" in manifest["heldout"]["source"]
    assert manifest["train"]["provenance"]["carved"]["part"] is None
    assert run.generation(1).is_complete


def test_a_hub_dataset_that_cannot_be_reached_is_a_one_line_error():
    """hub:owner/name datasets load with datasets.load_dataset; the tests run offline
    (HF_HUB_OFFLINE=1), where loading one says what failed and what to check, or how to use files."""
    (source,) = corpus.locate_splits("hub:some-org/some-dataset", "train", text_column="story")
    assert source.hub == ("some-org/some-dataset", None) and source.text_column == "story"
    with pytest.raises(LmcollapseError, match=r"corpus hub:some-org/some-dataset split 'train' could not be loaded "
                                              r"from the hub \(.*\): check the dataset id, data.hub_config and the "
                                              r"network, or save it to a folder of .jsonl/.parquet files"):
        corpus.load_split_lines(source)


def test_records_without_a_line_break_get_one_so_documents_do_not_run_together(tmp_path):
    write_records(tmp_path / "train.jsonl", ["first story.", "second story.\n", "  "], "jsonl")
    (source,) = corpus.locate_splits(str(tmp_path), "train")
    assert list(corpus.load_split_lines(source)["text"]) == ["first story.\n", "second story.\n", ""]


def test_corpus_options_that_do_not_apply_are_refused():
    with pytest.raises(ConfigError, match=r"data.hub_config: only applies to hub datasets"):
        build_config({"data": {"corpus": "wikitext-2-raw-v1", "hub_config": "x"}})
    with pytest.raises(ConfigError, match=r"data.text_column: wikitext-2-raw-v1 is a named corpus with its own text column"):
        build_config({"data": {"text_column": "body"}})


def test_splits_of_one_release_family_or_one_hub_dataset_count_as_the_same_text(tmp_path):
    wt2, wt103 = corpus.locate_split("wikitext-2-v1", "test"), corpus.locate_split("wikitext-103-raw-v1", "test")
    assert corpus.same_text(wt2, wt103)  # WikiText-103's test split is WikiText-2's
    assert not corpus.same_text(corpus.locate_split("wikitext-2-v1", "train"), wt103)
    hub_train = corpus.locate_split("hub:o/stories", "train")
    config = build_config({"data": {"corpus": "hub:o/stories", "carve_fraction": 0.1}})
    carved = dataclasses.replace(hub_train, split="test", carving=corpus.Carving("train", 0.1, 0, 0, 1))
    assert corpus.same_text(hub_train, carved)  # held-out rows carved from the train split pretraining reads
    with pytest.raises(LmcollapseError, match=r"data.carve_fraction: the splits of hub:o/stories could not be listed"):
        corpus.locate_data_splits(config, "test")  # offline in the tests
    with pytest.raises(LmcollapseError, match=r"tinystories is read from the hub .* only, with no archive to fetch"):
        corpus.fetch_named_corpus("tinystories", tmp_path)
