"""The human corpus: lookup order, local folders, the hub's line convention, provenance, blocks,
and one-line errors for bad files. Tests build the data situation they need in a temporary folder:
none depends on which optional files (the raw train split, the tokenized release) a machine has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmcollapse import data as corpus
from lmcollapse.engine.modeling import train_bpe_tokenizer
from lmcollapse.errors import LmcollapseError


def only_here(monkeypatch, tmp_path: Path, data_dir: Path | None = None) -> None:
    """Search only ``data_dir`` (default: an empty folder) and ./data inside ``tmp_path``."""
    empty = tmp_path / "no-data"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("LMCOLLAPSE_DATA_DIR", str(data_dir or empty))
    monkeypatch.chdir(tmp_path)


def hub_builder_lines(path: Path) -> list[str]:
    """The oracle: the rows the hub's WikiText builder (the ``wikitext.py`` script of
    Salesforce/wikitext) yields for a file, as documented there: for each line ``row`` of the file
    (opened as UTF-8 text, newline kept), ``row`` if ``row.strip()`` else ``""``."""
    with open(path, encoding="utf-8") as handle:
        return [row if row.strip() else "" for row in handle]


def test_named_corpus_found_through_the_data_dir(data_dir, monkeypatch, tmp_path):
    source = corpus.locate_split("wikitext-2-raw-v1", "validation")
    assert source.files == (data_dir / "wikitext-2-raw" / "wiki.valid.raw",)
    # Without the variable, ./data is searched next, and then the hub is the only option left.
    monkeypatch.delenv("LMCOLLAPSE_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert not corpus.locate_split("wikitext-2-raw-v1", "validation").is_local
    (tmp_path / "data" / "wikitext-2-raw").mkdir(parents=True)
    (tmp_path / "data" / "wikitext-2-raw" / "wiki.valid.raw").write_text(" = Title = \n")
    assert corpus.locate_split("wikitext-2-raw-v1", "validation").files[0].resolve() == \
        (tmp_path / "data" / "wikitext-2-raw" / "wiki.valid.raw").resolve()


# Blank and whitespace-only lines of every kind, content lines (with leading spaces, with
# characters that str.splitlines would break on but a text file does not), CRLF, and an end
# without a newline, after content or after whitespace.
FIXTURE_LINES = [
    (" = Title = \n", " = Title = \n"),
    (" \n", ""),  # WikiText's blank line
    ("\n", ""),
    ("   \t  \n", ""),
    ("\t\n", ""),
    ("\xa0\u3000\n", ""),  # no-break and ideographic spaces
    (" \x0b\x0c\x1c\x85 \n", ""),  # whitespace that str.splitlines would also split on
    ("\u2028\u2029\n", ""),
    ("\u200b\n", "\u200b\n"),  # a zero-width space is not whitespace to str.strip: content
    (" The cat sat on the mat . \n", " The cat sat on the mat . \n"),
    ("form\x0cfeed and line\u2028separator stay one line\n", "form\x0cfeed and line\u2028separator stay one line\n"),
    (" \r\n", ""),  # universal newlines, as in the builder's text-mode open
    ("crlf line\r\n", "crlf line\n"),
    ("  \n", ""),
]


@pytest.mark.parametrize("ending, expected_end", [("last line, no newline", ["last line, no newline"]),
                                                  (" \t ", [""])])
@pytest.mark.parametrize("where", ["named", "folder"])
def test_lines_follow_the_hub_builder_wherever_the_corpus_is(monkeypatch, tmp_path, ending, expected_end, where):
    text = "".join(line for line, _ in FIXTURE_LINES) + ending
    root = tmp_path / "root"
    if where == "named":  # the raw train split of the named corpus, found through LMCOLLAPSE_DATA_DIR
        path = root / "wikitext-2-raw" / "wiki.train.raw"
        only_here(monkeypatch, tmp_path, root)
        name = "wikitext-2-raw-v1"
    else:  # a plain local folder: the same convention
        path = root / "train.txt"
        name = str(root)
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode("utf-8"))
    source = corpus.locate_split(name, "train")
    assert source.files == (path,)
    rows = list(corpus.load_split_lines(source)["text"])
    assert rows == hub_builder_lines(path)
    assert rows == [row for _, row in FIXTURE_LINES] + expected_end


def test_a_split_of_several_files_reads_them_in_order_with_the_same_convention(tmp_path):
    split = tmp_path / "corpus" / "test"
    split.mkdir(parents=True)
    (split / "a.txt").write_text("one\n \n\t", encoding="utf-8")  # no newline at its end
    (split / "b.txt").write_text("two\n", encoding="utf-8")
    rows = list(corpus.load_split_lines(corpus.locate_split(str(tmp_path / "corpus"), "test"))["text"])
    assert rows == hub_builder_lines(split / "a.txt") + hub_builder_lines(split / "b.txt") == ["one\n", "", "", "two\n"]


def test_hub_rows_keep_the_builder_convention(monkeypatch):
    import datasets

    served = [" = Title = \n", "", " text \n", " \n", "last"]  # as served, with one " \n" slipped in
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": served})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = corpus.SplitSource("wikitext-2-raw-v1", "train", hub=("Salesforce/wikitext", "wikitext-2-raw-v1"))
    assert list(corpus.load_split_lines(source)["text"]) == [" = Title = \n", "", " text \n", "", "last"]
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "train")]


def test_the_shipped_raw_split_reads_as_the_hub_builder_reads_it(data_dir):
    source = corpus.locate_split(str(data_dir / "wikitext-2-raw"), "validation")
    rows = list(corpus.load_split_lines(source)["text"])
    assert rows == hub_builder_lines(data_dir / "wikitext-2-raw" / "wiki.valid.raw")
    assert "" in rows and " \n" not in rows


def test_missing_train_split_falls_back_to_the_hub_with_a_clear_error(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub

    only_here(monkeypatch, tmp_path)  # whatever the machine's data folders hold
    # and no copy of the dataset in a Hugging Face cache (HF_HUB_OFFLINE=1 in tests would use one)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    source = corpus.locate_split("wikitext-2-raw-v1", "train")
    assert not source.is_local and source.hub == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert str(tmp_path / "no-data" / "wikitext-2-raw" / "wiki.train.raw") in source.searched
    with pytest.raises(LmcollapseError) as err:
        corpus.load_split_lines(source)
    message = str(err.value)
    assert "is not on disk" in message and "LMCOLLAPSE_DATA_DIR" in message and "\n" not in message


def test_tokenized_release_is_a_named_corpus(monkeypatch, tmp_path):
    root = tmp_path / "root"
    fallback = root / "wikitext-2-raw" / "tokenized-fallback-wikitext-2-v1"
    fallback.mkdir(parents=True)
    (fallback / "wiki.train.tokens").write_text(" = Title = \n \n the <unk> sat \n")
    only_here(monkeypatch, tmp_path, root)
    source = corpus.locate_split("wikitext-2-v1", "train")
    assert source.files == (fallback / "wiki.train.tokens",)  # the fallback folder is searched
    (root / "wikitext-2").mkdir()
    (root / "wikitext-2" / "wiki.train.tokens").write_text("the <unk> ran \n")
    assert corpus.locate_split("wikitext-2-v1", "train").files == (root / "wikitext-2" / "wiki.train.tokens",)
    assert corpus.locate_split("wikitext-2-v1", "train").record()["kind"] == "tokenized"


def test_local_folder_splits(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "train.txt").write_text("a b c\n")
    (tmp_path / "flat" / "wiki.valid.raw").write_text("d e\n")
    assert corpus.locate_split(str(tmp_path / "flat"), "train").files == (tmp_path / "flat" / "train.txt",)
    assert corpus.locate_split(str(tmp_path / "flat"), "validation").files == (tmp_path / "flat" / "wiki.valid.raw",)
    nested = tmp_path / "nested" / "test"
    nested.mkdir(parents=True)
    (nested / "b.txt").write_text("two\n")
    (nested / "a.txt").write_text("one\n")
    assert [p.name for p in corpus.locate_split(str(tmp_path / "nested"), "test").files] == ["a.txt", "b.txt"]


def test_record_says_where_a_split_came_from_and_in_which_format(monkeypatch, tmp_path):
    root = tmp_path / "root"
    (root / "wikitext-2-raw").mkdir(parents=True)
    (root / "wikitext-2-raw" / "wiki.test.raw").write_text(" = T = \n")
    only_here(monkeypatch, tmp_path, root)
    local = corpus.locate_split("wikitext-2-raw-v1", "test").record()
    hub = corpus.locate_split("wikitext-2-raw-v1", "train").record()
    for record in (local, hub):
        assert json.loads(json.dumps(record)) == record
        assert "whitespace-only lines as empty strings (the hub builder's convention)" in record["format"]
        assert record["corpus"] == "wikitext-2-raw-v1" and record["kind"] == "raw"
    assert local["origin"] == "local" and local["hub"] is None and local["split"] == "test"
    assert local["files"] == [str((root / "wikitext-2-raw" / "wiki.test.raw").resolve())]
    assert hub["origin"] == "hub" and hub["files"] == [] and hub["split"] == "train"
    assert hub["hub"] == {"path": "Salesforce/wikitext", "config": "wikitext-2-raw-v1"}
    folder = tmp_path / "mine"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.txt").write_text("x\n")
    (folder / "train" / "b.raw").write_text("y\n")
    (folder / "test.tokens").write_text("z\n")
    assert corpus.locate_split(str(folder), "train").record()["kind"] == "raw+text"
    assert corpus.locate_split(str(folder), "test").record()["kind"] == "tokenized"


def test_check_same_source_refuses_splits_from_two_places(monkeypatch, tmp_path):
    env_root, local_data = tmp_path / "env", tmp_path / "data"
    for root, names in ((env_root, ("wiki.valid.raw", "wiki.test.raw")), (local_data, ("wiki.train.raw", "wiki.test.raw"))):
        (root / "wikitext-2-raw").mkdir(parents=True)
        for name in names:
            (root / "wikitext-2-raw" / name).write_text(" = T = \n")
    only_here(monkeypatch, tmp_path, env_root)
    train, test, valid = (corpus.locate_split("wikitext-2-raw-v1", s) for s in ("train", "test", "validation"))
    assert train.files[0].parent.resolve() == (local_data / "wikitext-2-raw").resolve()  # ./data
    assert test.files[0].parent == env_root / "wikitext-2-raw"  # $LMCOLLAPSE_DATA_DIR first
    corpus.check_same_source(valid, test, allow_mixed=False)  # one folder
    with pytest.raises(LmcollapseError) as err:
        corpus.check_same_source(train, test, allow_mixed=False)  # local files in two folders
    message = str(err.value)
    assert "\n" not in message and "local files in" in message and str(env_root / "wikitext-2-raw") in message
    assert "put both splits in one folder" in message and "LMCOLLAPSE_DATA_DIR" in message and "`make data`" in message
    assert 'SET="data.mixed_sources=true"' in message
    corpus.check_same_source(train, test, allow_mixed=True)
    # One split from the hub, the other local.
    hub_train = corpus.SplitSource("wikitext-2-raw-v1", "train", hub=("Salesforce/wikitext", "wikitext-2-raw-v1"))
    with pytest.raises(LmcollapseError, match=r"from the hub \(Salesforce/wikitext, wikitext-2-raw-v1; not found locally\) but .* from local files"):
        corpus.check_same_source(hub_train, test, allow_mixed=False)
    with pytest.raises(LmcollapseError, match="data.mixed_sources=true"):
        corpus.check_same_source(test, hub_train, allow_mixed=False)
    corpus.check_same_source(hub_train, test, allow_mixed=True)
    hub_test = corpus.SplitSource("wikitext-2-raw-v1", "test", hub=("Salesforce/wikitext", "wikitext-2-raw-v1"))
    corpus.check_same_source(hub_train, hub_test, allow_mixed=False)  # both from the same hub dataset
    # A folder corpus with a sub-folder per split is one source.
    folder = tmp_path / "mine"
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        (folder / split / "a.txt").write_text("x\n")
    corpus.check_same_source(*corpus.locate_splits(str(folder), "train", "test"), allow_mixed=False)


def test_locate_splits_prefers_one_folder_holding_every_split(monkeypatch, tmp_path):
    env_root, local_data = tmp_path / "env", tmp_path / "data"
    for root, names in ((env_root, ("wiki.valid.raw", "wiki.test.raw")),
                        (local_data, ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"))):
        (root / "wikitext-2-raw").mkdir(parents=True)
        for name in names:
            (root / "wikitext-2-raw" / name).write_text(" = T = \n")
    only_here(monkeypatch, tmp_path, env_root)
    train, test = corpus.locate_splits("wikitext-2-raw-v1", "train", "test")
    assert train.folder == test.folder == Path("data") / "wikitext-2-raw"  # after `make data`: all from ./data
    corpus.check_same_source(train, test, allow_mixed=False)
    valid, test = corpus.locate_splits("wikitext-2-raw-v1", "validation", "test")
    assert valid.folder == test.folder == env_root / "wikitext-2-raw"  # $LMCOLLAPSE_DATA_DIR still comes first
    (local_data / "wikitext-2-raw" / "wiki.test.raw").unlink()
    train, test = corpus.locate_splits("wikitext-2-raw-v1", "train", "test")  # no folder holds both
    assert (train.folder, test.folder) == (Path("data") / "wikitext-2-raw", env_root / "wikitext-2-raw")
    with pytest.raises(LmcollapseError, match="has no split 'dev'"):
        corpus.locate_splits("wikitext-2-raw-v1", "train", "dev")


@pytest.mark.parametrize("content, message", [
    (None, "corpus .* not found: it is neither a named corpus"),
    (b"", "is empty"),
    (b" \n \n", "is empty"),
    (b"caf\xe9 au lait\n", r"is not UTF-8 \(invalid byte 0xe9 at offset 3\): re-encode it as UTF-8"),
    (b"ok\n\xe2\x82", "is not UTF-8 .*truncated character"),
])
def test_bad_corpus_files_are_one_line_errors(tmp_path, content, message):
    folder = tmp_path / "corpus"
    if content is not None:
        folder.mkdir()
        (folder / "train.txt").write_bytes(content)
    with pytest.raises(LmcollapseError, match=message) as err:
        source = corpus.locate_split(str(folder), "train")
        corpus.load_split_lines(source)
    assert "\n" not in str(err.value)


def test_folder_without_the_split_says_what_it_expected(tmp_path):
    (tmp_path / "other.txt").write_text("text\n")
    with pytest.raises(LmcollapseError, match="has no split 'train': expected train.txt .* it holds other.txt"):
        corpus.locate_split(str(tmp_path), "train")


def test_lines_tokenize_and_cut_into_blocks(small_corpus, tmp_path):
    lines = corpus.load_split_lines(corpus.locate_split(str(small_corpus), "train"))
    raw = (small_corpus / "train.txt").read_text(encoding="utf-8")
    # one row per line, line breaks kept, nothing dropped but the whitespace of blank lines (" \n")
    assert len(lines) == raw.count("\n") and [t for t in lines["text"] if t] == \
        [line for line in raw.splitlines(keepends=True) if line.strip()]
    tokenizer = train_bpe_tokenizer(lines["text"], vocab_size=300)
    stream = corpus.tokenize_lines(lines, tokenizer)
    expected = [t for line in lines["text"] for t in tokenizer(line)["input_ids"]]
    assert stream.tolist() == expected
    blocks = corpus.cut_into_blocks(stream, 16)
    assert blocks.shape == (len(stream) // 16, 16)
    assert np.array_equal(blocks.reshape(-1), stream[: blocks.size])
    with pytest.raises(LmcollapseError, match="fewer than one block of 100000"):
        corpus.cut_into_blocks(stream, 100_000)


def test_bpe_tokenizer_is_opt_like_and_deterministic(small_corpus):
    text = (small_corpus / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    first, second = train_bpe_tokenizer(text, 300), train_bpe_tokenizer(text, 300)
    assert first.get_vocab() == second.get_vocab()
    ids = first("The castle\n")["input_ids"]
    assert ids[0] == first.bos_token_id == first.eos_token_id == 2 and first.pad_token_id == 1
    assert first.decode(ids, skip_special_tokens=True) == "The castle\n"
