"""MAUVE (Pillutla et al., NeurIPS 2021): how close a synthetic corpus is to human text, as
distributions, not as n-gram counts.

Self-BLEU and distinct-n rate a corpus by its own repetitions, so a small model's incoherent
samples score as *more* diverse than the human text they imitate. MAUVE compares the two
distributions in a model's feature space: both samples are embedded (the final hidden state at
each text's last token, as the reference implementation embeds them), quantised together by
k-means, and the divergence frontier of the two histograms is integrated (1: indistinguishable).
The computation past the features is the reference package's (``mauve.compute_mauve``); the
features come from one fixed featurizer for the whole run, so generations are comparable.

    features = final_token_features(model, sequences, batch_size)
    result = mauve_between(synthetic_features, human_features, clusters=None, seed=0)
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from lmcollapse.engine.precision import autocast
from lmcollapse.metrics.perplexities import map_batches, right_padded


def final_token_features(model, sequences: Sequence[np.ndarray], batch_size: int, accelerator=None,
                         progress: str | None = None, precision: str = "no") -> np.ndarray:
    """(sequences x hidden) float32: the model's last-layer hidden state at each sequence's last token."""
    device = next(model.parameters()).device

    def compute(batch: list[np.ndarray]) -> list[np.ndarray]:
        ids, mask = right_padded(batch)  # the last real token is at len - 1
        with autocast(precision, device):
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                           use_cache=False).hidden_states[-1]
        last = torch.as_tensor([len(seq) - 1 for seq in batch], device=hidden.device)
        rows = hidden[torch.arange(len(batch), device=hidden.device), last].float().cpu().numpy()
        return list(rows)

    if any(len(seq) == 0 for seq in sequences):
        raise ValueError("an empty text has no last token to embed")
    features = map_batches(model, sequences, batch_size, compute, accelerator, progress, len(sequences))
    return np.stack(features).astype(np.float32)


def default_clusters(samples: int) -> int:
    """The reference implementation's heuristic: a tenth of the samples, at least 2."""
    return max(2, int(round(samples / 10)))


def mauve_between(p_features: np.ndarray, q_features: np.ndarray, clusters: int | None = None, seed: int = 0) -> dict:
    """MAUVE between two feature samples (``mauve.compute_mauve`` on them), with its settings."""
    import mauve

    samples = min(len(p_features), len(q_features))
    clusters = clusters or default_clusters(samples)
    if clusters >= samples:
        raise ValueError(f"MAUVE needs fewer clusters ({clusters}) than samples ({samples})")
    with without_faiss_size_warning():
        out = mauve.compute_mauve(p_features=p_features, q_features=q_features, num_buckets=clusters, seed=seed,
                                  verbose=False)
    return {"mauve": float(out.mauve), "mauve_star": float(out.mauve_star),
            "frontier_integral": float(out.frontier_integral), "clusters": int(clusters), "kmeans_seed": seed}


# faiss writes this from C++ whenever it clusters fewer than 39 points per centroid, verbose or
# not. MAUVE's own heuristic (a tenth of the samples per side: 2,000 points, 100 centroids) is
# always below that, so every evaluation printed it, though nothing is wrong.
FAISS_SIZE_WARNING = re.compile(r"WARNING clustering \d+ points to \d+ centroids: please provide at least \d+ training points\n?")


@contextmanager
def without_faiss_size_warning() -> Iterator[None]:
    """Hold what reaches stderr (file descriptor 2: C++ writes there directly) while the block
    runs, then pass it on without faiss's size warning; every other line reaches stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            rest = FAISS_SIZE_WARNING.sub("", held.read().decode(errors="replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()
