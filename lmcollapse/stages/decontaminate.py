"""Decontamination: drop the candidate records a detector thinks are synthetic, before training.

The detector never sees provenance except on a small, seeded "annotated" sample of the candidates
(``labelled_fraction``), on which it is fitted; it then scores every candidate with P(synthetic)
and drops those above ``threshold``. Its precision and recall (synthetic is the positive class)
are measured against the true provenance labels on the candidates it was *not* fitted on.

Detectors:

* ``classifier``: logistic regression on hashed bags of token uni- and bigrams (2^18 features),
  a standard text classifier that needs no model;
* ``perplexity``: each record's mean NLL under the previous generation's model, the signal of
  zero-shot detectors (model-written text is likely under the model that wrote it), turned into a
  probability by a one-feature logistic regression fitted on the annotated sample.

    kept, report = decontaminate(candidates, config, generation, scorer_model=model)
    kept = filter_candidates(context, index, candidates)   # the stage: the report written, then the kept records
"""

from __future__ import annotations

import logging

import datasets
import numpy as np

from lmcollapse.config import PipelineConfig
from lmcollapse.data.records import SYNTHETIC
from lmcollapse.engine.modeling import end_of_text_ids
from lmcollapse.errors import LmcollapseError
from lmcollapse.metrics.detection import detection_report
from lmcollapse.run.atomic import write_json_atomic
from lmcollapse.run.seeding import rng
from lmcollapse.stages.context import Context

log = logging.getLogger(__name__)
HASHED_FEATURES = 2**18


def decontaminate(candidates: datasets.Dataset, config: PipelineConfig, generation: int,
                  scorer_model=None, batch_size: int = 64, accelerator=None,
                  end_of_text_ids: tuple[int, ...] = ()) -> tuple[datasets.Dataset, dict]:
    settings = config.decontaminate
    truth = np.asarray(candidates["source"], dtype=object) == SYNTHETIC
    n = len(candidates)
    labelled = np.zeros(n, dtype=bool)
    labelled[rng(config.seed, "decontaminate", generation).choice(n, size=max(int(round(settings.labelled_fraction * n)), 2),
                                                                   replace=False)] = True
    if truth[labelled].all() or not truth[labelled].any():
        raise LmcollapseError(
            f"generation {generation}: the annotated sample holds only {'synthetic' if truth[labelled].all() else 'human'} "
            "records, so no detector can be fitted: raise decontaminate.labelled_fraction or keep more human data")
    probability = detector_probability(candidates, config, truth, labelled, scorer_model, batch_size, accelerator)
    drop = probability > settings.threshold
    kept = candidates.select(np.flatnonzero(~drop))
    # The same detector without the trivial cue: OPT's </s> opens every line of human text and
    # never appears in synthetic text (min_new_tokens suppresses it), so a detector can separate
    # the two by that token alone. Fitted and measured again with it removed; reported, not used.
    cue_free = probability if not end_of_text_ids else detector_probability(
        candidates, config, truth, labelled, scorer_model, batch_size, accelerator, removed_tokens=end_of_text_ids)
    without_cue = detection_report(truth, cue_free > settings.threshold, labelled)
    report = detection_report(truth, drop, labelled) | {
        "detector": settings.detector, "threshold": settings.threshold, "labelled": int(labelled.sum()),
        "candidates": n, "kept": int((~drop).sum()),
        "without_end_of_text_cue": {"removed_tokens": sorted(end_of_text_ids),
                                    **{k: without_cue[k] for k in ("precision", "recall", "f1")}}}
    log.info("generation %d: decontamination dropped %d of %d candidates (precision %.3f, recall %.3f; "
             "without the </s> cue %.3f, %.3f)", generation, int(drop.sum()), n, report["precision"],
             report["recall"], without_cue["precision"], without_cue["recall"])
    return kept, report


def detector_probability(candidates: datasets.Dataset, config: PipelineConfig, truth: np.ndarray, labelled: np.ndarray,
                         scorer_model=None, batch_size: int = 64, accelerator=None,
                         removed_tokens: tuple[int, ...] | set[int] = ()) -> np.ndarray:
    """P(synthetic) for every candidate from the configured detector, fitted on the labelled ones;
    tokens in ``removed_tokens`` are taken out of every record first."""
    removed = np.asarray(sorted(removed_tokens), dtype=np.int64)
    sequences = [np.asarray(ids, dtype=np.int64) for ids in candidates["input_ids"]]
    if len(removed):
        sequences = [s[~np.isin(s, removed)] for s in sequences]
    if config.decontaminate.detector == "classifier":
        features = hashed_ngrams(sequences)
    else:
        if scorer_model is None:
            raise ValueError("the perplexity detector needs the previous generation's model")
        from lmcollapse.metrics.perplexity import score_sequences

        nll, tokens = score_sequences(scorer_model, sequences, [1] * len(sequences), batch_size, accelerator,
                                      precision=config.evaluate.mixed_precision)
        features = (nll / np.maximum(tokens, 1)).reshape(-1, 1)
    return fit_and_score(features, truth, labelled, config.seed)


def hashed_ngrams(sequences: list[np.ndarray]):
    """A sparse (records x 2^18) matrix of token unigram and bigram counts, hashed."""
    from sklearn.feature_extraction import FeatureHasher

    def grams(ids: np.ndarray) -> list[str]:
        tokens = [str(t) for t in ids.tolist()]
        return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]

    return FeatureHasher(n_features=HASHED_FEATURES, input_type="string").transform(grams(s) for s in sequences)


def fit_and_score(features, truth: np.ndarray, labelled: np.ndarray, seed: int) -> np.ndarray:
    """Fit a logistic regression on the labelled rows; P(synthetic) for every row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if features.shape[1] == 1:  # one dense feature: standardise so the default regularisation is mild
        features = StandardScaler().fit(features[labelled]).transform(features)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(features[labelled], truth[labelled].astype(int))
    return model.predict_proba(features)[:, list(model.classes_).index(1)]


def filter_candidates(context: Context, index: int, candidates):
    """Decontamination: the detector's report is written before the training set it filtered."""
    scorer = None
    if context.config.decontaminate.detector == "perplexity":
        scorer = context.load_weights(context.run.generation(index - 1).model)
    kept, report = decontaminate(candidates, context.config, index, scorer, context.config.evaluate.batch_size,
                                 end_of_text_ids=end_of_text_ids(context.tokenizer()))
    write_json_atomic(context.run.generation(index).decontamination, report)
    return kept
