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

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lmcollapse.failpoints import failpoint
from lmcollapse.interrupts import check_stop
from lmcollapse.progress import progress_bar


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


def perplexity_blocks(model, stream: np.ndarray, block_size: int, batch_size: int = 32,
                      accelerator=None, progress: str | None = None) -> PerplexityResult:
    """Non-overlapping blocks of ``block_size``; a trailing partial block is dropped."""
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    count = len(stream) // block_size
    if count == 0:
        raise ValueError(f"the text has {len(stream)} tokens, fewer than one block of {block_size}")
    blocks = np.asarray(stream[: count * block_size]).reshape(count, block_size)
    nll, tokens = score_sequences(model, list(blocks), [1] * count, batch_size, accelerator, progress)
    return _result("blocks", nll, tokens, {"block_size": block_size})


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


def perplexity_sliding(model, stream: np.ndarray, window: int, stride: int, batch_size: int = 32,
                       accelerator=None, progress: str | None = None) -> PerplexityResult:
    """Sliding windows of ``window`` tokens every ``stride`` tokens; each token scored once."""
    if len(stream) < 2:
        raise ValueError("the text needs at least 2 tokens")
    spans = sliding_windows(len(stream), window, stride)
    sequences = [np.asarray(stream[b:e]) for b, e, _ in spans]
    nll, tokens = score_sequences(model, sequences, [s for _, _, s in spans], batch_size, accelerator, progress)
    return _result("sliding", nll, tokens, {"window": window, "stride": stride})


def sample_perplexities(model, sequences: Sequence[np.ndarray], batch_size: int = 32,
                        accelerator=None, progress: str | None = None) -> np.ndarray:
    """Per-sequence perplexity, each sequence scored on its own (nan for fewer than 2 tokens)."""
    nll, tokens = score_sequences(model, list(sequences), [1] * len(sequences), batch_size, accelerator, progress)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tokens > 0, np.exp(nll / np.maximum(tokens, 1)), np.nan)


@torch.no_grad()
def score_sequences(model, sequences: list[np.ndarray], first_scored: Sequence[int], batch_size: int,
                    accelerator=None, progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and count of the scored tokens of every sequence.

    Token ``t`` of sequence ``i`` is scored (predicted from tokens ``< t``) when
    ``t >= first_scored[i]``; ``first_scored`` is at least 1, since nothing predicts token 0.
    Batches are fixed slices of the input, so a sequence's score does not depend on how many
    processes share the work.
    """
    n = len(sequences)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    mine = batches[rank::world]
    results: dict[int, tuple[float, int]] = {}
    bar = progress_bar(mine, desc=progress, unit="batch", enabled=progress is not None and rank == 0, leave=False)
    for batch in bar:
        rows = [np.asarray(sequences[i], dtype=np.int64) for i in batch]
        longest = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        scored = torch.zeros((len(rows), max(longest - 1, 0)), dtype=torch.bool)
        for k, (i, row) in enumerate(zip(batch, rows)):
            ids[k, : len(row)] = torch.from_numpy(row)
            mask[k, : len(row)] = 1
            # logits at position t predict token t+1
            scored[k, max(first_scored[i], 1) - 1: len(row) - 1] = True
        if longest < 2:
            for i in batch:
                results[i] = (0.0, 0)
            continue
        ids, mask = ids.to(device), mask.to(device)
        context = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
        with context:
            logits = model(input_ids=ids, attention_mask=mask).logits
        token_nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
        token_nll = (token_nll * scored.to(device)).double().sum(dim=1).cpu().numpy()
        counts = scored.sum(dim=1).numpy()
        for k, i in enumerate(batch):
            results[i] = (float(token_nll[k]), int(counts[k]))
        failpoint("eval-batch")
        check_stop("while evaluating")  # process-local: ranks run different numbers of batches
    if world > 1:
        from accelerate.utils import gather_object

        merged: dict[int, tuple[float, int]] = {}
        for part in gather_object([results]):
            merged.update(part)
        results = merged
    model.train(was_training)
    nll = np.array([results[i][0] for i in range(n)], dtype=np.float64)
    tokens = np.array([results[i][1] for i in range(n)], dtype=np.int64)
    return nll, tokens


def _result(method: str, nll: np.ndarray, tokens: np.ndarray, settings: dict) -> PerplexityResult:
    total = int(tokens.sum())
    mean = float(nll.sum() / total) if total else float("nan")
    return PerplexityResult(method, math.exp(mean) if total else float("nan"), mean, total, nll, tokens, settings)
