"""Perplexity, token-weighted, by non-overlapping blocks or by a sliding window.

Both methods score a token stream (held-out text, tokenized line by line and concatenated):

* ``blocks`` (the reference code's method): cut the stream into blocks of ``block_size``; each
  block predicts its tokens 2..block_size from the tokens before them *in the block*.
* ``sliding`` (Hugging Face's "perplexity of fixed-length models"): windows of ``window`` tokens
  every ``stride`` tokens; each token is scored once, in the first window that reaches it, with
  up to ``window - 1`` tokens of context. ``stride == window`` reproduces ``blocks`` exactly.

Perplexity is ``exp(sum of NLL / number of predicted tokens)`` over the whole stream, never a mean
of per-block perplexities. Per-block (per-window) NLL sums are kept for plotting distributions.
Work is split into fixed batches; under ``accelerate launch`` each process scores every P-th
batch and the results are gathered, so the numbers do not depend on the number of processes.

    result = perplexity(model, tokenizer, texts, method="blocks", block_size=64)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lmcollapse.engine.losses import token_losses
from lmcollapse.engine.precision import autocast
from lmcollapse.run.failpoints import failpoint
from lmcollapse.run.interrupts import check_stop
from lmcollapse.run.progress import progress_bar


@dataclass(frozen=True)
class PerplexityResult:
    method: str
    perplexity: float
    mean_nll: float
    tokens: int
    sequence_nll: np.ndarray = field(repr=False)  # summed NLL of each block / window
    sequence_tokens: np.ndarray = field(repr=False)  # predicted tokens in each block / window
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"method": self.method, "perplexity": self.perplexity, "mean_nll": self.mean_nll,
                "tokens": self.tokens, "sequences": int(len(self.sequence_nll)), **self.settings}


def perplexity(model, tokenizer, texts: Sequence[str], method: str = "blocks", block_size: int = 64,
               window: int = 128, stride: int = 64, batch_size: int = 32, accelerator=None) -> PerplexityResult:
    """Perplexity of ``model`` on ``texts`` (each tokenized on its own, then concatenated)."""
    stream = token_stream(tokenizer, texts)
    if method == "blocks":
        return perplexity_blocks(model, stream, block_size, batch_size, accelerator)
    if method == "sliding":
        return perplexity_sliding(model, stream, window, stride, batch_size, accelerator)
    raise ValueError(f"unknown perplexity method {method!r}: use 'blocks' or 'sliding'")


def token_stream(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Tokenize each text with the tokenizer's defaults (special tokens included) and concatenate."""
    ids = tokenizer(list(texts))["input_ids"]
    return np.fromiter((t for seq in ids for t in seq), dtype=np.int64)


@dataclass(frozen=True)
class TokenStream:
    """A token sequence read chunk by chunk, so evaluation memory does not grow with the text.

    ``chunks()`` returns a fresh iterator of int arrays each time (one pass per method);
    ``length`` is the total number of tokens.
    """

    chunks: Callable[[], Iterable[np.ndarray]]
    length: int

    @classmethod
    def from_array(cls, tokens) -> TokenStream:
        tokens = np.asarray(tokens, dtype=np.int64)
        return cls(lambda: iter([tokens]), len(tokens))

    @classmethod
    def from_parquet(cls, path, column: str = "input_ids", rows_per_read: int = 512) -> TokenStream:
        """The concatenated ``column`` of a records file, read ``rows_per_read`` rows at a time."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        def chunks():
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_read, columns=[column]):
                yield np.asarray(pc.list_flatten(batch.column(0)).to_numpy(zero_copy_only=False), dtype=np.int64)

        return cls(chunks, sum(len(c) for c in chunks()))


def _as_stream(tokens) -> TokenStream:
    return tokens if isinstance(tokens, TokenStream) else TokenStream.from_array(tokens)


def iter_blocks(stream: TokenStream, block_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Consecutive blocks of ``block_size`` tokens (first scored position 1); the remainder is dropped."""
    pending = np.empty(0, dtype=np.int64)
    for chunk in stream.chunks():
        pending = np.concatenate([pending, chunk]) if len(pending) else np.asarray(chunk, dtype=np.int64)
        usable = (len(pending) // block_size) * block_size
        for start in range(0, usable, block_size):
            yield pending[start:start + block_size], 1
        pending = pending[usable:]


def predicted_bytes(tokenizer, stream: TokenStream, block_size: int) -> int:
    """UTF-8 bytes of the text that block evaluation predicts: each block's tokens but its first,
    special tokens (end-of-text) counting none. With the NLL of the same targets it gives bits per
    byte, which, unlike perplexity per token, compares models with different tokenizers.

    A byte-level tokenizer (every preset's, GPT-2's, OPT's) is counted exactly, token by token: each
    character of a token's string stands for one byte. Any other is counted by decoding each block
    whole and less its first token (a tokenizer that drops a leading space when decoding drops it
    from both), exact but where a block boundary splits a character.
    """
    lengths = byte_lengths(tokenizer)
    total = 0
    for block, _ in iter_blocks(stream, block_size):
        if lengths is not None:
            total += int(lengths[block[1:]].sum())
            continue
        ids = block.tolist()
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        first = tokenizer.decode(ids[:1], skip_special_tokens=True)
        total += len(whole.encode("utf-8")) - len(first.encode("utf-8"))
    return total


def byte_lengths(tokenizer) -> np.ndarray | None:
    """The bytes each token id stands for, where the tokenizer is byte-level (special tokens: 0);
    None for any other."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for token, index in tokenizer.get_vocab().items():
        if index < len(lengths) and index not in special:
            lengths[index] = len(token)
    return lengths


def sliding_windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position inside the window) for every window over ``length`` tokens."""
    if not 1 <= stride <= window:
        raise ValueError("stride must be between 1 and window")
    spans, previous_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + window, length)
        scored = end - previous_end
        spans.append((begin, end, max(end - begin - scored, 1)))
        previous_end = end
        if end == length:
            break
    return spans


def iter_windows(stream: TokenStream, window: int, stride: int) -> Iterator[tuple[np.ndarray, int]]:
    """The sliding windows of ``stream``, holding at most one window plus one chunk in memory."""
    buffer, buffer_start = np.empty(0, dtype=np.int64), 0
    chunks = iter(stream.chunks())
    for begin, end, first in sliding_windows(stream.length, window, stride):
        while buffer_start + len(buffer) < end:
            buffer = np.concatenate([buffer, np.asarray(next(chunks), dtype=np.int64)])
        if begin > buffer_start:  # tokens before this window are never needed again
            buffer, buffer_start = buffer[begin - buffer_start:], begin
        yield buffer[: end - begin], first


def perplexity_blocks(model, stream, block_size: int, batch_size: int = 32,
                      accelerator=None, progress: str | None = None, precision: str = "no",
                      excluded_targets: Sequence[int] = ()) -> PerplexityResult:
    """Non-overlapping blocks of ``block_size`` (a trailing partial block is dropped).

    ``stream``: a token array or a :class:`TokenStream`. Targets whose id is in
    ``excluded_targets`` are not scored (they still serve as context).
    """
    return perplexity_blocks_excluding(model, stream, block_size, [excluded_targets], batch_size, accelerator, progress,
                                       precision)[0]


def perplexity_blocks_excluding(model, stream, block_size: int, exclusions: Sequence[Sequence[int]],
                                batch_size: int = 32, accelerator=None, progress: str | None = None,
                                precision: str = "no") -> list[PerplexityResult]:
    """:func:`perplexity_blocks` once per set of ``excluded_targets`` in ``exclusions``, from one
    forward pass per batch: a token's NLL does not depend on which other targets are scored, so
    each result equals its own call's to the bit, at the cost of one."""
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    stream = _as_stream(stream)
    count = stream.length // block_size
    if count == 0:
        raise ValueError(f"the text has {stream.length} tokens, fewer than one block of {block_size}")
    scored = _score_items(model, iter_blocks(stream, block_size), batch_size, accelerator, progress, count, precision,
                          exclusions)
    return [_result("blocks", nll, tokens,
                    {"block_size": block_size} | ({"excluded_targets": sorted(excluded)} if excluded else {}))
            for (nll, tokens), excluded in zip(scored, exclusions)]


def perplexity_sliding(model, stream, window: int, stride: int, batch_size: int = 32,
                       accelerator=None, progress: str | None = None, precision: str = "no") -> PerplexityResult:
    """Sliding windows of ``window`` tokens every ``stride`` tokens; each token after the first
    scored once where ``stride`` < ``window`` (at ``stride`` = ``window`` each window's first is not)."""
    stream = _as_stream(stream)
    if stream.length < 2:
        raise ValueError("the text needs at least 2 tokens")
    total = len(sliding_windows(stream.length, window, stride))
    nll, tokens = score_stream(model, iter_windows(stream, window, stride), batch_size, accelerator, progress, total,
                               precision)
    return _result("sliding", nll, tokens, {"window": window, "stride": stride})


def sample_perplexities(model, sequences: Sequence[np.ndarray], batch_size: int = 32,
                        accelerator=None, progress: str | None = None, precision: str = "no") -> np.ndarray:
    """Per-sequence perplexity, each sequence scored on its own (nan for fewer than 2 tokens)."""
    nll, tokens = score_sequences(model, list(sequences), [1] * len(sequences), batch_size, accelerator, progress,
                                  precision)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tokens > 0, np.exp(nll / np.maximum(tokens, 1)), np.nan)


def score_sequences(model, sequences: Sequence[np.ndarray], first_scored: Sequence[int], batch_size: int,
                    accelerator=None, progress: str | None = None,
                    precision: str = "no") -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and count of the scored tokens of every sequence (see :func:`score_stream`)."""
    return score_stream(model, zip(sequences, first_scored), batch_size, accelerator, progress, len(sequences),
                        precision)


def score_stream(model, items: Iterable[tuple[np.ndarray, int]], batch_size: int, accelerator=None,
                 progress: str | None = None, total: int | None = None,
                 precision: str = "no", excluded_targets: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and count of the scored tokens of every (sequence, first scored position) item.

    Token ``t`` of a sequence is scored (predicted from tokens ``< t``) when ``t >= first``;
    ``first`` is at least 1, since nothing predicts token 0. Forward passes run at ``precision``
    (``no``: fp32), the evaluation's own setting, whatever the model was trained with.
    """
    return _score_items(model, items, batch_size, accelerator, progress, total, precision, [excluded_targets])[0]


def _score_items(model, items: Iterable[tuple[np.ndarray, int]], batch_size: int, accelerator, progress: str | None,
                 total: int | None, precision: str,
                 exclusions: Sequence[Sequence[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`score_stream`'s (NLL, count) arrays once per set of excluded targets, one forward pass per batch."""
    device = next(model.parameters()).device
    scored = map_batches(model, items, batch_size,
                         lambda batch: _score_batch(model, batch, device, precision, exclusions),
                         accelerator, progress, total)
    return [(np.array([item[k][0] for item in scored], dtype=np.float64),
             np.array([item[k][1] for item in scored], dtype=np.int64)) for k in range(len(exclusions))]


@torch.no_grad()
def map_batches(model, items: Iterable, batch_size: int, compute: Callable[[list], Sequence],
                accelerator=None, progress: str | None = None, total: int | None = None) -> list:
    """``compute(batch)`` (one value per item) over consecutive batches of ``items``, the model in eval mode.

    Items are read lazily and cut into consecutive batches of ``batch_size``; under ``accelerate
    launch`` process p computes batches p, p+P, ... and the results are gathered in order, so an
    item's value does not depend on how many processes share the work.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    was_training = model.training
    model.eval()
    results: list[tuple[int, list]] = []
    batches = -(-total // batch_size) if total is not None else None
    bar = progress_bar(total=batches, desc=progress, unit="batch", enabled=progress is not None and rank == 0, leave=False)
    for index, batch in enumerate(_batched(items, batch_size)):
        bar.update(1)
        if index % world != rank:
            continue
        results.append((index, list(compute(batch))))
        failpoint("eval-batch")
        check_stop("while evaluating")  # process-local: ranks run different numbers of batches
    bar.close()
    if world > 1:
        from accelerate.utils import gather_object

        results = [part for parts in gather_object([results]) for part in parts]
    model.train(was_training)
    results.sort(key=lambda part: part[0])
    return [value for _, values in results for value in values]


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def right_padded(sequences: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (right-padded with 0: masked out) and the attention mask of ``sequences``, on the CPU."""
    longest = max(len(seq) for seq in sequences)
    ids = torch.zeros((len(sequences), longest), dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for k, seq in enumerate(sequences):
        ids[k, :len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        mask[k, :len(seq)] = 1
    return ids, mask


def _score_batch(model, batch: list[tuple[np.ndarray, int]], device, precision: str,
                 exclusions: Sequence[Sequence[int]]) -> list[tuple[tuple[float, int], ...]]:
    """Each item's (summed NLL, scored tokens), once per set of excluded targets in ``exclusions``."""
    longest = max(len(seq) for seq, _ in batch)
    if longest < 2:
        return [((0.0, 0),) * len(exclusions)] * len(batch)
    ids, mask = right_padded([seq for seq, _ in batch])
    # targets[k, t] is the token that the logits at position t predict (t + 1), or -100 if unscored
    targets = torch.full((len(batch), longest), -100, dtype=torch.long)
    for k, (seq, first) in enumerate(batch):
        start = max(first, 1)
        end = max(len(seq), start)  # an empty sequence scores nothing (len - 1 = -1 would be "to the end")
        targets[k, start - 1:end - 1] = ids[k, start:end]
    ids, mask = ids.to(device), mask.to(device)
    with autocast(precision, device):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # no KV cache to fill
    token_nll = token_losses(logits, targets.to(device)).double()
    sums = []
    for excluded in exclusions:
        scored = (targets != -100) & ~torch.isin(targets, torch.as_tensor(list(excluded), dtype=torch.long))
        scored = scored.to(device)
        # Zero where unscored, as cross_entropy's ignore_index gives: the sums are those of a pass
        # with these targets set to -100, to the bit.
        # NOTE: plain Python numbers, not arrays viewing tensors: a small tensor kept alive past the
        # batch sits on top of the heap, above the freed logits, and glibc cannot give those pages
        # back; evaluation memory then grew ~3.5 MB a batch (bench/evaluation.py caught it).
        sums.append(zip(torch.where(scored, token_nll, 0.0).sum(dim=1).tolist(), scored.sum(dim=1).tolist()))
    return list(zip(*sums))


def _result(method: str, nll: np.ndarray, tokens: np.ndarray, settings: dict) -> PerplexityResult:
    total = int(tokens.sum())
    mean = float(nll.sum() / total) if total else float("nan")
    return PerplexityResult(method, math.exp(mean) if total else float("nan"), mean, total, nll, tokens, settings)
