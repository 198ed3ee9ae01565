"""The quantities training minimises and selects on: the (weighted) next-token NLL of a
micro-batch and the validation loss, over right-padded batches of token blocks.

    loss = chunk_loss(model, sequences, chunk, weights, pad_id, accelerator, normalizer)
    value = validation_loss(model, blocks, pad_id, accelerator, batch_size)
    nll = token_losses(logits, targets)        # per position; what perplexity is computed from too
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position NLL, 0 where the target is -100. The labels are shifted, not the logits, so
    the (batch x length x vocabulary) logits are never copied (fp32 ones, at least)."""
    batch, length, vocab = logits.shape
    flat = F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1), reduction="none", ignore_index=-100)
    return flat.view(batch, length)


def chunk_loss(model, sequences, chunk, weights, pad_id, accelerator, normalizer, compiled: bool = False):
    if len(chunk) == 0:
        # This process has no block in a short last batch; DDP still needs its backward
        # pass to join the gradient all-reduce, so run a zero-weight one.
        ids = torch.full((1, 2), pad_id, dtype=torch.long, device=accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=ids, use_cache=False).logits
        return logits.float().sum() * 0.0
    device = accelerator.device
    ids, mask, targets = _padded_batch([sequences[i] for i in chunk], pad_id, device)
    row_weights = _to_device(torch.as_tensor(weights[chunk], dtype=torch.float32), device)
    with accelerator.autocast():
        summed = (_compiled_weighted_nll() if compiled else _weighted_nll)(model, ids, mask, targets, row_weights)
    return summed / max(normalizer, 1e-12)


def _padded_batch(rows: list, pad_id: int, device: torch.device):
    """Token ids (right-padded), the attention mask and next-token targets (-100 where none) of
    ``rows``, on ``device``. The mask is None when no row is padded: the model then uses SDPA's
    causal kernel directly (the same arithmetic) instead of checking a mask of ones, a check that
    on a GPU waits for every queued kernel."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    targets = torch.full((len(rows), longest), -100, dtype=torch.long)  # at t: token t+1, or -100
    for k, row in enumerate(rows):
        row = torch.as_tensor(np.asarray(row, dtype=np.int64))
        ids[k, :len(row)], mask[k, :len(row)], targets[k, :len(row) - 1] = row, 1, row[1:]
    padded = any(len(r) < longest for r in rows)
    return _to_device(ids, device), _to_device(mask, device) if padded else None, _to_device(targets, device)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through pinned memory, without waiting: a copy from
    pageable memory first waits for every queued kernel, which would stall the step's launch
    until the previous step is done."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _weighted_nll(model, ids, mask, targets, row_weights):
    """The chunk's next-token NLL summed over its tokens, each row's weighted by its weight.

    ``use_cache=False``: a model's config asks for a KV cache by default, and with it every forward
    pass copies each layer's keys and values into a fresh cache that nothing reads (Trainer turns
    it off the same way); the logits do not change."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return (token_losses(logits, targets) * row_weights[:, None]).sum()


_COMPILED: dict[str, object] = {}


def _compiled_weighted_nll():
    """``_weighted_nll`` compiled once per process (``train.compile``): the model's forward and the
    loss over the vocabulary in one graph (compiling the model alone leaves the log-softmax, a
    large share of a small model's step, outside it). The compiled code is keyed by the function,
    not the model object, so the next generation's model of the same shape reuses it."""
    if "nll" not in _COMPILED:
        _COMPILED["nll"] = torch.compile(_weighted_nll)
    return _COMPILED["nll"]


@torch.no_grad()
def validation_loss(model, blocks: list[np.ndarray], pad_id: int, accelerator, batch_size: int) -> float:
    """Token-weighted mean NLL of ``blocks``, dropout off.

    The blocks are cut into fixed batches of ``batch_size``; process p scores batches p, p+P, ...;
    each block's summed NLL is placed at its index and the processes' vectors are added (every entry
    comes from one process, so the sum is exact), then summed in block order on every process. So
    every process holds the same number, and any number of processes gives the one-process value.
    """
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    per_block = np.zeros(len(blocks), dtype=np.float64)
    for number, start in enumerate(range(0, len(blocks), batch_size)):
        if number % world != rank:
            continue
        chunk = np.arange(start, min(start + batch_size, len(blocks)))
        per_block[chunk] = _block_nll(model, blocks, chunk, pad_id, accelerator).double().cpu().numpy()
    if world > 1:
        per_block = accelerator.reduce(torch.as_tensor(per_block, device=accelerator.device), reduction="sum").cpu().numpy()
    model.train()
    tokens = sum(max(len(block) - 1, 0) for block in blocks)
    return float(per_block.sum() / max(tokens, 1))


def _block_nll(model, sequences, chunk, pad_id, accelerator) -> torch.Tensor:
    """The summed next-token NLL of each block in ``chunk`` (padding excluded)."""
    ids, mask, targets = _padded_batch([sequences[i] for i in chunk], pad_id, accelerator.device)
    with accelerator.autocast():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return token_losses(logits, targets).sum(dim=1)
