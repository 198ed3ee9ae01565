"""Perplexity: a hand-computed NLL, sliding window vs blocks, batch-size independence."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, micro_opt, token_records
from lmcollapse.metrics.perplexities import (
    perplexity,
    perplexity_blocks,
    perplexity_blocks_excluding,
    perplexity_sliding,
    sample_perplexities,
    sliding_windows,
)


@pytest.fixture(scope="module")
def tiny_model():
    return micro_opt(vocab_size=50, layers=2).eval()


@pytest.fixture(scope="module")
def stream():
    return np.random.default_rng(0).integers(3, 50, size=203)


def hand_nll(model, tokens: np.ndarray, first_scored: int = 1) -> tuple[float, int]:
    """Sum of -log p(token t | tokens < t) for t >= first_scored, in float64, one sequence at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens)[None]).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    total = -sum(log_probs[t - 1, tokens[t]].item() for t in range(first_scored, len(tokens)))
    return total, len(tokens) - first_scored


def test_blocks_reproduce_a_hand_computed_nll(tiny_model, stream):
    result = perplexity_blocks(tiny_model, stream, block_size=16, batch_size=5)
    blocks = stream[: (len(stream) // 16) * 16].reshape(-1, 16)
    total, count = 0.0, 0
    for block in blocks:
        nll, n = hand_nll(tiny_model, block)
        total, count = total + nll, count + n
    assert result.tokens == count == len(blocks) * 15
    assert abs(result.mean_nll - total / count) < 1e-6
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-6)
    assert np.allclose(result.sequence_nll, [hand_nll(tiny_model, b)[0] for b in blocks], atol=1e-5)


def test_sliding_window_scores_every_token_once_with_its_context(tiny_model, stream):
    spans = sliding_windows(len(stream), window=32, stride=8)
    covered = [b + t for b, e, first in spans for t in range(first, e - b)]
    assert covered == list(range(1, len(stream)))  # every token but the first, once, in order
    result = perplexity_sliding(tiny_model, stream, window=32, stride=8, batch_size=4)
    total = sum(hand_nll(tiny_model, stream[b:e], first)[0] for b, e, first in spans)
    assert result.tokens == len(stream) - 1
    assert abs(result.mean_nll - total / result.tokens) < 1e-6


def test_sliding_with_stride_equal_to_window_is_the_block_method(tiny_model, stream):
    usable = stream[: (len(stream) // 16) * 16]
    blocks = perplexity_blocks(tiny_model, usable, 16, batch_size=4)
    sliding = perplexity_sliding(tiny_model, usable, window=16, stride=16, batch_size=4)
    assert sliding.tokens == blocks.tokens
    assert sliding.perplexity == pytest.approx(blocks.perplexity, rel=1e-9)


@pytest.mark.parametrize("method", ["blocks", "sliding"])
def test_results_do_not_depend_on_batch_size(tiny_model, stream, method):
    def run(batch):
        if method == "blocks":
            return perplexity_blocks(tiny_model, stream, 16, batch_size=batch)
        return perplexity_sliding(tiny_model, stream, window=24, stride=10, batch_size=batch)
    reference = run(1)
    for batch in (2, 3, 7, 64):
        other = run(batch)
        assert other.tokens == reference.tokens
        assert other.mean_nll == pytest.approx(reference.mean_nll, abs=1e-6)
        assert np.allclose(other.sequence_nll, reference.sequence_nll, atol=1e-5)


def test_per_sample_perplexity_of_unequal_lengths(tiny_model):
    rng = np.random.default_rng(1)
    samples = [rng.integers(3, 50, size=n) for n in (9, 1, 4, 17)]
    values = sample_perplexities(tiny_model, samples, batch_size=3)
    assert math.isnan(values[1])  # one token: nothing to predict
    for sample, value in zip(samples, values):
        if len(sample) > 1:
            nll, count = hand_nll(tiny_model, sample)
            assert value == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_public_function_takes_model_and_tokenizer(tiny_model):
    class Tokenizer:  # the interface perplexity() needs: __call__ returning input_ids
        def __call__(self, texts):
            return {"input_ids": [[2] + [3 + (ord(c) % 40) for c in t] for t in texts]}

    texts = ["hello world\n", "collapse is gradual\n"] * 4
    by_text = perplexity(tiny_model, Tokenizer(), texts, method="blocks", block_size=8)
    stream = np.array([t for ids in Tokenizer()(texts)["input_ids"] for t in ids])
    assert by_text.perplexity == perplexity_blocks(tiny_model, stream, 8).perplexity
    with pytest.raises(ValueError, match="unknown perplexity method"):
        perplexity(tiny_model, Tokenizer(), texts, method="mean")


def test_streamed_evaluation_equals_the_in_memory_one(tiny_model, stream, tmp_path):
    from lmcollapse.data.records import write_records
    from lmcollapse.metrics.perplexities import TokenStream, iter_windows, sliding_windows

    # Chunks of awkward sizes, as a Parquet file of records delivers them.
    pieces = [stream[i:i + 17] for i in range(0, len(stream), 17)]
    write_records(token_records([p.tolist() for p in pieces]), tmp_path / "heldout.parquet")
    streamed = TokenStream.from_parquet(tmp_path / "heldout.parquet", rows_per_read=3)
    assert streamed.length == len(stream)
    assert np.array_equal(np.concatenate(list(streamed.chunks())), stream)
    windows = list(iter_windows(streamed, window=24, stride=10))
    expected = sliding_windows(len(stream), 24, 10)
    assert [(len(w), f) for w, f in windows] == [(e - b, f) for b, e, f in expected]
    assert all(np.array_equal(w, stream[b:e]) for (w, _), (b, e, _) in zip(windows, expected))
    for method in (perplexity_blocks, perplexity_sliding):
        kwargs = {"block_size": 16} if method is perplexity_blocks else {"window": 24, "stride": 10}
        a, b = method(tiny_model, stream, batch_size=4, **kwargs), method(tiny_model, streamed, batch_size=4, **kwargs)
        assert a.tokens == b.tokens and np.array_equal(a.sequence_nll, b.sequence_nll)


def test_blocks_without_end_of_text_targets_by_hand(tiny_model):
    """ppl_blocks_no_eos: targets that are </s> (id 2) are not scored, but stay as context."""
    stream = np.random.default_rng(1).integers(3, 50, size=160)
    stream[::7] = 2  # </s> at every 7th position, as at WikiText's line starts
    result = perplexity_blocks(tiny_model, stream, block_size=16, batch_size=3, excluded_targets=[2])
    total, count = 0.0, 0
    for block in stream.reshape(-1, 16):
        with torch.no_grad():
            log_probs = torch.log_softmax(tiny_model(input_ids=torch.tensor(block)[None]).logits[0].double(), dim=-1)
        for t in range(1, 16):
            if block[t] != 2:
                total -= log_probs[t - 1, block[t]].item()
                count += 1
    assert result.tokens == count < 10 * 15
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-6)
    assert result.perplexity != pytest.approx(perplexity_blocks(tiny_model, stream, 16).perplexity, rel=1e-3)


def test_one_pass_for_both_block_perplexities_equals_a_pass_each_to_the_bit(tiny_model):
    """ppl_blocks and ppl_blocks_no_eos come from one forward pass per batch. Each block's summed NLL
    equals, bit for bit, a pass whose targets are masked with cross_entropy's ignore_index (the two
    passes the evaluation made before), at a batch size that leaves a short last batch."""
    stream = np.random.default_rng(2).integers(3, 50, size=16 * 11)
    stream[::5] = 2
    blocks, no_eos = perplexity_blocks_excluding(tiny_model, stream, 16, [(), (2,)], batch_size=4)

    def one_pass(excluded: tuple[int, ...]) -> np.ndarray:
        sums = []
        for start in range(0, 11, 4):
            batch = torch.as_tensor(stream[start * 16:(start + 4) * 16].reshape(-1, 16))
            targets = torch.full_like(batch, -100)
            targets[:, :-1] = batch[:, 1:]
            targets[torch.isin(targets, torch.tensor(excluded, dtype=torch.long))] = -100
            with torch.no_grad():
                logits = tiny_model(input_ids=batch, use_cache=False).logits
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                                    reduction="none", ignore_index=-100).view(batch.shape)
            sums += nll.double().sum(dim=1).tolist()
        return np.array(sums)

    assert np.array_equal(blocks.sequence_nll, one_pass(()))
    assert np.array_equal(no_eos.sequence_nll, one_pass((2,)))
    assert no_eos.tokens < blocks.tokens == 11 * 15
    assert blocks.settings == {"block_size": 16} and no_eos.settings == {"block_size": 16, "excluded_targets": [2]}
    alone = perplexity_blocks(tiny_model, stream, 16, batch_size=4, excluded_targets=[2])
    assert (alone.perplexity, alone.tokens) == (no_eos.perplexity, no_eos.tokens)


@pytest.mark.parametrize("family", ["opt", "llama", "gpt2"])
def test_predicted_bytes_are_the_bytes_of_every_scored_target(family):
    """Bits per byte divides the targets' NLL by their text's bytes: each block's tokens but the
    first (the first is never predicted), end-of-text and other special tokens contributing none;
    counted by hand from each token's own bytes (the byte-level alphabet: one character a byte)."""
    from lmcollapse.engine.modeling import train_bpe_tokenizer
    from lmcollapse.metrics.perplexities import TokenStream, predicted_bytes

    lines = ["The cat sat on the mat .", "Über café naïve — 3 € each", "a dog ran in the park"] * 10
    tokenizer = train_bpe_tokenizer(lines, 300, 64, family)
    ids = np.asarray([t for line in lines for t in tokenizer(line)["input_ids"]])  # with the family's BOS
    block = 8
    # By hand: the bytes of the text each block's tokens after the first encode (special ones none).
    special = set(tokenizer.all_special_ids)
    expected = sum(len(tokenizer.decode([t for t in ids[start + 1:start + block] if t not in special]).encode("utf-8"))
                   for start in range(0, len(ids) // block * block, block))
    decoded_whole = sum(len(tokenizer.decode(ids[start + 1:start + block], skip_special_tokens=True).encode("utf-8"))
                        for start in range(0, len(ids) // block * block, block))
    got = predicted_bytes(tokenizer, TokenStream.from_array(ids), block)
    # Decoding a block's tokens can split a multi-byte character (shown as U+FFFD, 3 bytes): the
    # token-by-token count is exact, so it equals the bytes of the text only where no split happens.
    assert got == sum(len(line.encode("utf-8")) for line in lines) - _first_and_tail_bytes(tokenizer, ids, block)
    assert abs(got - expected) <= 3 * len(ids) // block and abs(got - decoded_whole) <= 3 * len(ids) // block


def _first_and_tail_bytes(tokenizer, ids, block: int) -> int:
    """The bytes the block count leaves out: each block's first token and the trailing partial block."""
    from lmcollapse.metrics.perplexities import byte_lengths

    lengths = byte_lengths(tokenizer)
    usable = len(ids) // block * block
    return int(lengths[ids[0:usable:block]].sum() + lengths[ids[usable:]].sum())


def test_the_package_gives_the_functions_whichever_module_was_imported_first():
    """``from lmcollapse.metrics import perplexity, self_bleu`` gives the functions, also in a
    process whose stages imported the modules that compute them first: the perplexities are
    imported on first use, and a submodule of a function's name would have shadowed it."""
    probe = ("import inspect, lmcollapse.stages.evaluate; "
             "from lmcollapse.metrics import perplexity, sample_perplexities, self_bleu, distinct_n; "
             "print([f.__name__ for f in (perplexity, sample_perplexities, self_bleu, distinct_n) if inspect.isfunction(f)])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip() == "['perplexity', 'sample_perplexities', 'self_bleu', 'distinct_n']", result.stderr[-2000:]

