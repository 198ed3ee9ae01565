"""Fast-DetectGPT (Bao et al., ICLR 2024): the analytic conditional probability curvature of a
text under a scoring model, a zero-shot detector of machine-written text.

For a text x of T scored tokens and a scoring model p, with per-position log-probabilities
l_t(v) = log p(v | x_<t):

    criterion(x) = (sum_t l_t(x_t) - sum_t mu_t) / sqrt(sum_t sigma2_t)
    mu_t     = E_{v ~ p(.|x_<t)} l_t(v)          (the expected log-likelihood of a resampled token)
    sigma2_t = Var_{v ~ p(.|x_<t)} l_t(v)

Model-written text sits where the model's own likelihood is high compared with what it would
sample itself, so its criterion is large; human text's is near 0. Written from the paper's
definition (with the sampling and the scoring model the same, the analytic form needs one forward
pass); ``monte_carlo_criterion`` estimates the same quantity by resampling tokens (for tests).

    scores = fast_detectgpt_criterion(model, sequences, batch_size)
    stats = position_statistics(model, sequences, batch_size)   # also what a watermark costs (stages/evaluate.py)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmcollapse.engine.precision import autocast
from lmcollapse.metrics.perplexities import map_batches, right_padded


def fast_detectgpt_criterion(model, sequences: Sequence[np.ndarray], batch_size: int, accelerator=None,
                             progress: str | None = None, precision: str = "no") -> np.ndarray:
    """The analytic criterion of every sequence (nan for fewer than 2 tokens: nothing is predicted)."""
    stats = position_statistics(model, sequences, batch_size, accelerator, progress, precision)
    with np.errstate(invalid="ignore", divide="ignore"):
        criterion = (stats[:, 0] - stats[:, 1]) / np.sqrt(np.maximum(stats[:, 2], 1e-12))
    return np.where(stats[:, 3] > 0, criterion, np.nan)


def position_statistics(model, sequences: Sequence[np.ndarray], batch_size: int, accelerator=None,
                        progress: str | None = None, precision: str = "no", first_scored: Sequence[int] | None = None,
                        excluded: Sequence[int] = (), excluded_steps: int = 0) -> np.ndarray:
    """(sequences x 4): per sequence, summed over its scored tokens, the observed log-likelihood
    sum_t l_t(x_t), the expected one sum_t mu_t (minus the entropy), the variance sum_t sigma2_t,
    and the number of scored tokens.

    Token t of sequence k is scored when t >= first_scored[k] (default 1: all but the first; a
    continuation after its prompt: the prompt's length). ``excluded`` tokens are removed from the
    distribution (renormalised) for the first ``excluded_steps`` scored tokens: what sampling drew
    from when generate.min_new_tokens kept end-of-text out.
    """
    device = next(model.parameters()).device
    firsts = [1] * len(sequences) if first_scored is None else [max(int(f), 1) for f in first_scored]

    def compute(batch: list[tuple[np.ndarray, int]]) -> list[tuple[float, float, float, int]]:
        longest = max(len(seq) for seq, _ in batch)
        if longest < 2:
            return [(0.0, 0.0, 0.0, 0)] * len(batch)
        ids, mask = right_padded([seq for seq, _ in batch])
        scored = torch.zeros((len(batch), longest - 1), dtype=torch.float64)  # at t: token t+1 is scored
        banned = torch.zeros((len(batch), longest - 1), dtype=torch.bool)
        for k, (seq, first) in enumerate(batch):
            last = max(len(seq) - 1, first - 1)  # an empty sequence scores nothing (len - 1 = -1 would be "to the end")
            scored[k, first - 1:last] = 1.0
            banned[k, first - 1:min(first - 1 + excluded_steps, last)] = True
        ids, mask, scored, banned = ids.to(device), mask.to(device), scored.to(device), banned.to(device)
        with autocast(precision, device):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].double()
        for token in excluded:
            logits[..., token] = logits[..., token].masked_fill(banned, float("-inf"))
        log_probs = torch.log_softmax(logits, dim=-1)
        observed = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        probs = log_probs.exp()
        finite = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))  # 0 * -inf is 0 here
        mean = (probs * finite).sum(-1)
        variance = (probs * finite.square()).sum(-1) - mean.square()
        sums = torch.stack([(observed * scored).sum(-1), (mean * scored).sum(-1), (variance * scored).sum(-1),
                            scored.sum(-1)], dim=1)
        return [(a, b, c, int(d)) for a, b, c, d in sums.tolist()]

    items = list(zip(sequences, firsts))
    rows = map_batches(model, items, batch_size, compute, accelerator, progress, len(items))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


@torch.no_grad()
def monte_carlo_criterion(model, sequence: np.ndarray, samples: int, generator: torch.Generator) -> float:
    """The same criterion with mu_t and sigma2_t estimated from ``samples`` tokens drawn from
    p(.|x_<t) at every position (the paper's sampling form, with the scoring model as sampler)."""
    ids = torch.as_tensor(np.asarray(sequence, dtype=np.int64)).unsqueeze(0)
    log_probs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].double(), dim=-1)
    observed = log_probs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1).sum()
    drawn = torch.multinomial(log_probs.exp(), samples, replacement=True, generator=generator)  # (T-1, samples)
    resampled = log_probs.gather(-1, drawn)  # l_t of each resampled token
    mean = resampled.mean(dim=1).sum()
    variance = resampled.var(dim=1, unbiased=True).sum()
    return float((observed - mean) / variance.sqrt())
