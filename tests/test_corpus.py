"""The human corpus: lookup order, local folders, blocks, and one-line errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from lmcollapse import corpus
from lmcollapse.errors import LmcollapseError
from lmcollapse.modeling import train_bpe_tokenizer


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


def test_missing_train_split_falls_back_to_the_hub_with_a_clear_error(data_dir, tmp_path):
    source = corpus.locate_split("wikitext-2-raw-v1", "train")  # the raw train split is not shipped here
    assert not source.is_local and source.hub == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    with pytest.raises(LmcollapseError) as err:
        corpus.load_split_lines(source)  # HF_HUB_OFFLINE=1 in tests
    message = str(err.value)
    assert "is not on disk" in message and "LMCOLLAPSE_DATA_DIR" in message and "\n" not in message


def test_tokenized_release_is_a_named_corpus(data_dir):
    source = corpus.locate_split("wikitext-2-v1", "train")
    assert source.files[0].name == "wiki.train.tokens"


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
    assert "".join(lines["text"]) == raw  # line breaks kept, nothing dropped
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
