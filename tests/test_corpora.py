"""Corpora beyond folders of text files: files of records (JSON lines, JSON, CSV, Parquet) read
through datasets' own builders, one file as the whole train split, splits carved from the train
split, and the one-line errors for records that hold no text."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import build_quietly, micro_config
from lmcollapse import data as corpus
from lmcollapse.config import build_config
from lmcollapse.data.corpus import CorpusPlan
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
    with pytest.raises(corpus.MissingSplit, match=r"no split 'test'.*it holds"):
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


def test_carving_is_offered_for_a_split_it_can_give_and_refused_where_it_would_carve_nothing(tmp_path):
    (tmp_path / "only-test").mkdir()
    write_records(tmp_path / "only-test" / "test.jsonl", documents(20, 0), "jsonl")
    (tmp_path / "only-train").mkdir()
    write_records(tmp_path / "only-train" / "train.jsonl", documents(20, 0), "jsonl")
    (tmp_path / "both").mkdir()
    for split in ("train", "test"):
        write_records(tmp_path / "both" / f"{split}.jsonl", documents(20, 1), "jsonl")

    def config(folder, *overrides):
        return build_config({"data": {"corpus": str(tmp_path / folder), "train_split": "train",
                                      **dict(overrides)}})
    # a missing held-out split: carving is the way on
    with pytest.raises(corpus.MissingSplit, match=r"no split 'test'.*; or set data.carve_fraction \(e.g. 0.05\) to "
                                                  r"carve it from the train split 'train'$"):
        corpus.locate_data_splits(config("only-train"), "train", "test")
    # a missing train split: carving cannot give it, set or not, and is not offered
    for overrides in ((), (("carve_fraction", 0.1),)):
        with pytest.raises(corpus.MissingSplit, match=r"no split 'train'") as raised:
            corpus.locate_data_splits(config("only-test", *overrides), "train", "test")
        assert "carve" not in str(raised.value)
    # every carvable split there: the fraction would be ignored, so a new run refuses it
    carving_nothing = config("both", ("carve_fraction", 0.1))
    with pytest.raises(LmcollapseError, match=r"^data.carve_fraction=0.1 would carve nothing: corpus .*both has its own "
                                              r"'test' split: leave data.carve_fraction out \(or set it to null\)$"):
        CorpusPlan(carving_nothing).check_settings_read()
    # ...and a run built with one before it was refused reads its splits as it did: whole, uncarved
    train, heldout = corpus.locate_data_splits(carving_nothing, "train", "test")
    assert (train.carving, heldout.carving) == (None, None) and heldout.files == (tmp_path / "both" / "test.jsonl",)


def test_a_text_column_on_lines_of_text_is_refused_not_ignored(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.txt").write_text("some words\n" * 5)
    config = build_config({"data": {"corpus": str(tmp_path), "train_split": "train", "text_column": "body"}})
    with pytest.raises(LmcollapseError, match=r"^data.text_column='body' names a column of records, but .* is lines of "
                                              r"text \(train.txt, test.txt\), which have no columns: leave "
                                              r"data.text_column out$"):
        CorpusPlan(config).check_settings_read()
    (tmp_path / "records").mkdir()
    for split in ("train", "test"):  # records: the column is read
        write_records(tmp_path / "records" / f"{split}.jsonl", documents(5, 0), "jsonl")
    records = build_config({"data": {"corpus": str(tmp_path / "records"), "train_split": "train",
                                     "text_column": "body"}})
    with pytest.raises(LmcollapseError, match=r"has no column 'body'"):
        corpus.load_split_lines(CorpusPlan(records).train)


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


def test_an_edited_record_file_is_read_as_it_is_now_even_with_its_old_modification_time(tmp_path, monkeypatch):
    """The builder's shared cache is keyed on path and modification time: an edit that kept the time
    was read as the old text while the manifest recorded the new file. Nothing is cached outside now."""
    import os

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    path = tmp_path / "corpus" / "train.jsonl"
    path.parent.mkdir()
    write_records(path, ["the old text\n"] * 3, "jsonl")
    (source,) = corpus.locate_splits(str(tmp_path / "corpus"), "train")
    assert corpus.load_split_lines(source)["text"][0] == "the old text\n"
    stamp = path.stat()
    write_records(path, ["quite other text\n"] * 3, "jsonl")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert corpus.load_split_lines(source)["text"][0] == "quite other text\n"
    assert not (tmp_path / "hf-cache").exists() or not any((tmp_path / "hf-cache").rglob("*.arrow"))


def test_a_malformed_or_non_utf8_record_file_says_why_in_one_line(tmp_path, capsys):
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "train.jsonl").write_text("{not json\n")
    with pytest.raises(LmcollapseError, match=r"could not be read as json \(.*(JSON|json|parse|Invalid).*\): check"):
        corpus.load_split_lines(corpus.locate_splits(str(tmp_path / "garbage"), "train")[0])
    assert "Failed to load JSON" not in capsys.readouterr().err  # the builder's own log line, held back
    # the offset is the file's, which a user can seek to, not the position within one value
    for suffix, text in (("jsonl", '{"text": "first line"}\n{"text": "caf\u00e9"}\n'),
                         ("csv", "text\nfirst line\ncaf\u00e9 au lait\n")):
        (tmp_path / f"latin1-{suffix}").mkdir()
        (tmp_path / f"latin1-{suffix}" / f"train.{suffix}").write_bytes(text.encode("latin-1"))
        offset = text.index("\u00e9")  # one byte a character here, so the index is the byte offset
        with pytest.raises(LmcollapseError, match=rf"train.{suffix} is not UTF-8 \(invalid byte 0xe9 at offset {offset}\)"):
            corpus.load_split_lines(corpus.locate_splits(str(tmp_path / f"latin1-{suffix}"), "train")[0])


@pytest.mark.parametrize("overrides, message", [
    ({"heldout_split": "../outside/secret"}, "data.heldout_split: '../outside/secret' is not a split name"),
    ({"train_split": "/etc/hostname"}, "data.train_split: '/etc/hostname' is not a split name"),
    ({"validation_split": ".."}, "data.validation_split: '..' is not a split name"),
])
def test_a_split_is_a_name_never_a_path(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({"data": overrides})


def test_a_held_out_split_with_the_training_text_under_another_name_is_refused(tmp_path):
    """Names compared as text let an alias through (train: validation, held out: valid, one file)."""
    (tmp_path / "valid.txt").write_text(" = A = \n The first article .\n" * 50)
    (tmp_path / "test.txt").write_text(" = B = \n Another article .\n" * 50)
    config = build_config({"data": {"corpus": str(tmp_path), "train_split": "validation", "heldout_split": "valid"}})
    with pytest.raises(LmcollapseError, match=r"data.heldout_split: 'valid' holds the same text as data.train_split "
                                              r"\('validation'\)"):
        CorpusPlan(config).check_fine_tuning_text()


def test_the_hint_to_remove_a_damaged_pretrained_base_survives_a_space_in_the_cache_path():
    import shlex

    from lmcollapse.stages.base_cache import PretrainedBase

    entry = PretrainedBase(Path("/tmp/sp cache/pretrained/tiny-opt-0123"), "0123")
    assert shlex.split(entry.fix().split(" (")[0]) == ["rm", "-r", "/tmp/sp cache/pretrained/tiny-opt-0123"]


def test_an_invalid_byte_just_after_a_character_cut_by_a_read_is_reported_where_it_is(tmp_path):
    """The file is read in chunks of 1 MiB; a character cut by a chunk's end and a bad byte after
    it raised an IndexError instead of the one-line error."""
    from lmcollapse.data.read import check_text_file

    body = b"a" * ((1 << 20) - 1) + "\u00e9".encode() + b"\xff" + b"more text\n"  # é's two bytes straddle the cut
    path = tmp_path / "train.txt"
    path.write_bytes(body)
    with pytest.raises(LmcollapseError, match=rf"is not UTF-8 \(invalid byte 0xff at offset {(1 << 20) + 1}\)"):
        check_text_file(path)


def test_a_corpus_that_is_a_fifo_and_a_cache_that_is_a_file_are_refused_in_one_line(tmp_path, monkeypatch):
    import os

    from lmcollapse.stages.base_cache import PretrainedBase
    from lmcollapse.stages.pretrain import check_writable

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(LmcollapseError, match=r"is neither a folder nor a regular file: point data.corpus at a folder"):
        corpus.locate_splits(str(tmp_path / "pipe"), "train")
    (tmp_path / "folder").mkdir()  # a split that is a FIFO: named as such, not "no split ... it holds test.txt"
    (tmp_path / "folder" / "train.txt").write_text("words\n")
    os.mkfifo(tmp_path / "folder" / "test.txt")
    with pytest.raises(LmcollapseError, match=r"test.txt is not a regular file \(a FIFO, a socket or a device\)"):
        corpus.locate_splits(str(tmp_path / "folder"), "train", "test")
    (tmp_path / "folder" / "test.txt").unlink()
    (tmp_path / "folder" / "test.txt").mkdir()  # a folder with a file's name: named, not skipped
    with pytest.raises(LmcollapseError, match=r"test.txt is a folder: the 'test' split is one file test.txt, or a "
                                              r"folder of files named test/; rename it"):
        corpus.locate_splits(str(tmp_path / "folder"), "train", "test")
    (tmp_path / "parts" / "train").mkdir(parents=True)  # a FIFO among a split folder's files: not skipped
    (tmp_path / "parts" / "train" / "a.txt").write_text("words\n")
    os.mkfifo(tmp_path / "parts" / "train" / "b.txt")
    with pytest.raises(LmcollapseError, match=r"b.txt is not a regular file"):
        corpus.locate_splits(str(tmp_path / "parts"), "train")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LMCOLLAPSE_CACHE_DIR", str(tmp_path / "a-file"))
    with pytest.raises(LmcollapseError, match=r"is not a folder \(.*a-file is a file\): set LMCOLLAPSE_CACHE_DIR="):
        check_writable(PretrainedBase(tmp_path / "a-file" / "pretrained" / "tiny-opt-0123", "0123"))


def test_re_encoding_leaves_the_tokenizer_as_it_found_it(tmp_path):
    """A fast tokenizer keeps the truncation of its last call and saves it in tokenizer.json: a chain's
    model saved after re-encoding differed from the same model saved by a resumed run (which skips it)."""
    from helpers import token_records
    from lmcollapse.data.retokenize import retokenized
    from lmcollapse.engine.modeling import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["the cat sat on the mat", "a dog ran in the park"] * 30, 280, 64, "gpt2")
    records = token_records([[5, 6, 7, 8, 9, 10, 11, 12]] * 3)
    records = records.map(lambda r: {"text": "the cat sat on the mat and a dog ran in the park"})
    tokenizer.save_pretrained(tmp_path / "before")
    assert all(len(ids) <= 4 for ids in retokenized(records, tokenizer, 4)["input_ids"])
    tokenizer.save_pretrained(tmp_path / "after")
    assert (tmp_path / "after" / "tokenizer.json").read_bytes() == (tmp_path / "before" / "tokenizer.json").read_bytes()


def test_a_hub_id_is_never_a_local_path(tmp_path, monkeypatch):
    """datasets reads a local folder of that name first: the text was recorded as the hub's, unhashed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c" / "jsonl_ok").mkdir(parents=True)
    with pytest.raises(LmcollapseError, match=r"names a folder here \(c/jsonl_ok\).*set data.corpus=c/jsonl_ok"):
        corpus.locate_splits("hub:c/jsonl_ok", "train")
    for odd in ("hub:../x", "hub:owner/..", "hub:/abs"):
        with pytest.raises(LmcollapseError, match=r"a hub dataset is written hub:owner/name"):
            corpus.locate_splits(odd, "train")


def test_no_text_of_a_record_file_vanishes_silently(tmp_path):
    """CSV cells NA, null, None... became "" (pandas' missing values); a JSONL record without the
    text column became "" too."""
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text("text\nNA\nnull\nNone\nn/a\nthe cat sat\n")
    (source,) = corpus.locate_splits(str(tmp_path / "csv"), "train")
    assert [t.strip() for t in corpus.load_split_lines(source)["text"]] == ["NA", "null", "None", "n/a", "the cat sat"]
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "train.jsonl").write_text('{"text": "first"}\n{"title": "no text"}\n')
    with pytest.raises(LmcollapseError, match=r"record 2 of corpus .* has no 'text' value: give every record its text"):
        corpus.load_split_lines(corpus.locate_splits(str(tmp_path / "jsonl"), "train")[0])
