"""Decontamination: drop the candidate records a detector thinks are synthetic, before training.

The detector never sees provenance except on a small, seeded "annotated" sample of the candidates
(``labelled_fraction``), on which it is fitted; it then scores every candidate with P(synthetic)
and drops those above ``threshold``. Its precision and recall (synthetic is the positive class)
are measured against the true provenance labels on the candidates it was *not* fitted on.

Detectors:

* ``classifier``: logistic regression on hashed bags of token uni- and bigrams (2^18 features),
  a standard text classifier that needs no model;
* ``perplexity``: each record's mean NLL under the scorer (the previous generation's model, or
  ``decontaminate.scorer``), the signal of zero-shot detectors (model-written text is likely under
  the model that wrote it), turned into a probability by a one-feature logistic regression fitted
  on the annotated sample;
* ``fast-detectgpt``: the analytic conditional probability curvature under the scorer
  (``metrics/curvature.py``), turned into a probability the same way;
* ``watermark``: the z-score of the run's own watermark (``generate.watermark``), nothing fitted:
  dropped above ``watermark_threshold``.

The filtering detector (``detector``) and those in ``measure`` are all measured on the same
records: precision, recall, F1 and the AUROC of their scores, in the report's ``detectors``.

    kept, report = decontaminate(candidates, config, generation, Scorer(model))
    kept = filter_candidates(context, index, candidates)   # the stage: the report written, then the kept records
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np
from transformers import AutoConfig

from lmcollapse.config import PipelineConfig
from lmcollapse.config.stage_sections import SCORED_DETECTORS
from lmcollapse.data.records import SYNTHETIC
from lmcollapse.engine.modeling import end_of_text_ids, load_model, position_limit
from lmcollapse.errors import LmcollapseError
from lmcollapse.metrics.detection import detection_report
from lmcollapse.run.atomic import write_json_atomic
from lmcollapse.run.seeding import rng
from lmcollapse.stages.context import Context

log = logging.getLogger(__name__)
HASHED_FEATURES = 2**18


@dataclass
class Scorer:
    """The scoring model of the perplexity and fast-detectgpt detectors, and how it reads a record:
    by the record's own ids (the run's model), or by its text with its own tokenizer (a named one)."""

    model: object
    tokenizer: object = None

    def sequences(self, candidates: datasets.Dataset, removed: np.ndarray) -> list[np.ndarray]:
        if self.tokenizer is None:
            return _without(candidates["input_ids"], removed)
        # Through the text, which holds none of the run's end-of-text tokens: nothing to remove; cut
        # to the model's positions (another vocabulary may take more tokens for the same text).
        encoded = self.tokenizer(list(candidates["text"]), truncation=True, max_length=position_limit(self.model))
        return [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]


@dataclass(frozen=True)
class Detection:
    """One detector's verdict on every candidate: its score (higher: more likely synthetic) and what it drops."""

    score: np.ndarray
    drop: np.ndarray


def decontaminate(candidates: datasets.Dataset, config: PipelineConfig, generation: int,
                  scorer: Scorer | None = None, batch_size: int = 64, accelerator=None,
                  end_of_text_ids: tuple[int, ...] = (), model_config=None) -> tuple[datasets.Dataset, dict]:
    """The candidates the filtering detector keeps, and the report of every measured detector."""
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

    def detect(name: str, removed_tokens=()) -> Detection:
        return run_detector(name, candidates, config, truth, labelled, scorer, batch_size, accelerator,
                            removed_tokens, model_config)

    measured = {name: detect(name) for name in settings.detectors}
    drop = measured[settings.detector].drop
    kept = candidates.select(np.flatnonzero(~drop))
    # The same detector without the trivial cue: OPT's </s> opens every line of human text and
    # never appears in synthetic text (min_new_tokens suppresses it), so a detector can separate
    # the two by that token alone. Fitted and measured again with it removed; reported, not used.
    cue_free = measured[settings.detector] if not end_of_text_ids else detect(settings.detector, end_of_text_ids)
    without_cue = detection_report(truth, cue_free.drop, labelled, cue_free.score)
    report = detection_report(truth, drop, labelled, measured[settings.detector].score) | {
        "detector": settings.detector, "labelled": int(labelled.sum()),
        "threshold": settings.watermark_threshold if settings.detector == "watermark" else settings.threshold,
        "candidates": n, "kept": int((~drop).sum()),
        "detectors": {name: detection_report(truth, d.drop, labelled, d.score) for name, d in measured.items()},
        "without_end_of_text_cue": {"removed_tokens": sorted(end_of_text_ids),
                                    **{k: without_cue[k] for k in ("precision", "recall", "f1", "auroc")}}}
    log.info("generation %d: decontamination dropped %d of %d candidates (precision %.3f, recall %.3f; "
             "without the </s> cue %.3f, %.3f)", generation, int(drop.sum()), n, report["precision"],
             report["recall"], without_cue["precision"], without_cue["recall"])
    return kept, report


def run_detector(name: str, candidates: datasets.Dataset, config: PipelineConfig, truth: np.ndarray,
                 labelled: np.ndarray, scorer: Scorer | None = None, batch_size: int = 64, accelerator=None,
                 removed_tokens: tuple[int, ...] | set[int] = (), model_config=None) -> Detection:
    """Detector ``name`` on every candidate (tokens in ``removed_tokens`` taken out of every record
    first): the trained ones fitted on the labelled records, the watermark's z-score thresholded."""
    settings = config.decontaminate
    removed = np.asarray(sorted(removed_tokens), dtype=np.int64)
    if name == "watermark":
        from lmcollapse.engine.watermark import watermark_z_scores

        z = watermark_z_scores(_without(candidates["input_ids"], removed), config.generate, config.seed, model_config)
        return Detection(z, z > settings.watermark_threshold)
    if name == "classifier":
        features = hashed_ngrams(_without(candidates["input_ids"], removed))
    else:
        if scorer is None:
            raise ValueError(f"the {name} detector needs a scoring model")
        sequences = scorer.sequences(candidates, removed)
        precision = config.evaluate.mixed_precision
        if name == "perplexity":
            from lmcollapse.metrics.perplexities import score_sequences

            nll, tokens = score_sequences(scorer.model, sequences, [1] * len(sequences), batch_size, accelerator,
                                          precision=precision)
            features = (nll / np.maximum(tokens, 1)).reshape(-1, 1)
        else:  # fast-detectgpt
            from lmcollapse.metrics.curvature import fast_detectgpt_criterion

            criterion = fast_detectgpt_criterion(scorer.model, sequences, batch_size, accelerator, precision=precision)
            features = np.nan_to_num(criterion, nan=0.0).reshape(-1, 1)
    probability = fit_and_score(features, truth, labelled, config.seed)
    return Detection(probability, probability > settings.threshold)


def _without(rows, removed: np.ndarray) -> list[np.ndarray]:
    sequences = [np.asarray(ids, dtype=np.int64) for ids in rows]
    return [s[~np.isin(s, removed)] for s in sequences] if len(removed) else sequences


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
    """Decontamination: the detectors' report is written before the training set it filtered."""
    config = context.config
    scorer = None
    if any(name in SCORED_DETECTORS for name in config.decontaminate.detectors):
        if config.decontaminate.scorer is None:
            writer = context.family_of(index - 1)
            # A writer of another family (model.chain) reads the candidates' text with its own tokenizer.
            scorer = Scorer(context.load_weights(context.run.generation(index - 1).model),
                            None if writer.position == context.family_of(index).position else writer.tokenizer())
        else:
            scorer = Scorer(*load_model(config.decontaminate.scorer, config.model.attn_implementation,
                                        trust_remote_code=config.model.trust_remote_code))
        scorer.model.to(context.accelerator.device)
    # The watermark detector needs the vocabulary the watermark was drawn over (every generation shares the base's).
    model_config = AutoConfig.from_pretrained(context.run.base_model) if "watermark" in config.decontaminate.detectors else None
    kept, report = decontaminate(candidates, config, index, scorer, config.evaluate.batch_size,
                                 end_of_text_ids=end_of_text_ids(context.family_of(index).tokenizer()), model_config=model_config)
    write_json_atomic(context.run.generation(index).decontamination, report)
    return kept
