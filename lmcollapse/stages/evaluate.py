"""The evaluation stage of a generation: held-out perplexity, the corpus's text metrics, the
tails, and the metrics row that ``metrics.csv`` holds.

    results = evaluate_generation(context, index, model, synthetic)
    row = generation_row(context, index, train_set, train_log, shards, results, timings)

Each result is written to its own file under ``generation-NN/eval/`` when computed and read back
when present, so a generation stopped during evaluation resumes after its last finished result.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from lmcollapse.config import PipelineConfig
from lmcollapse.data.records import read_records
from lmcollapse.data.regimes import source_counts
from lmcollapse.engine.modeling import end_of_text_ids
from lmcollapse.engine.watermark import watermark_z_scores
from lmcollapse.errors import LmcollapseError
from lmcollapse.metrics import TAIL_QUANTILES, tail_quantile
from lmcollapse.metrics.columns import (
    GenerationOutcome,
    distinct_column,
    metrics_row,
    self_bleu_column,
    tail_column,
)
from lmcollapse.metrics.curvature import position_statistics
from lmcollapse.metrics.distinct import distinct_n, distinct_n_li, distinct_n_per_sample, rare_ngram_survival
from lmcollapse.metrics.mauve_score import mauve_between
from lmcollapse.metrics.ngrams import EncodedCorpus
from lmcollapse.metrics.perplexities import (
    TokenStream,
    iter_blocks,
    perplexity_blocks_excluding,
    perplexity_sliding,
    predicted_bytes,
    sample_perplexities,
)
from lmcollapse.metrics.self_bleu import self_bleu_scores
from lmcollapse.run.atomic import read_json, sha256_file, write_array_atomic, write_json_atomic
from lmcollapse.run.manifests import read_manifest, write_manifest
from lmcollapse.run.seeding import rng, subsample_indices
from lmcollapse.stages.context import Context, Family
from lmcollapse.stages.featurizer import MauveFeaturizer
from lmcollapse.stages.generate import as_read_by


def ensure_json(context: Context, path: Path, compute) -> dict:
    """Read a finished evaluation result, or compute and write it (idempotent)."""
    if path.is_file():
        return read_json(path)
    started = time.perf_counter()
    value = compute() | {"seconds": 0.0}
    value["seconds"] = time.perf_counter() - started
    if context.main:
        write_json_atomic(path, value)
    context.accelerator.wait_for_everyone()
    return value


def heldout_perplexity(context: Context, model, label: str, block_nll_path: Path | None = None,
                       family: Family | None = None) -> dict:
    """Perplexity of ``model`` on the held-out blocks of its family (tokenized by its tokenizer),
    and bits per byte of the same text, which compares families."""
    config = context.config
    family = family or context.family(0)
    # Streamed from disk: evaluation memory does not grow with the held-out split.
    stream = TokenStream.from_parquet(family.run.human_heldout)
    batch = config.evaluate.batch_size
    precision = config.evaluate.mixed_precision
    # The </s> confound: OPT's </s> opens every held-out line but never appears in synthetic text,
    # so the blocks are scored with it and without it as a target (one forward pass for both).
    blocks, no_eos = perplexity_blocks_excluding(model, stream, config.eval_block_size,
                                                 [(), end_of_text_ids(family.tokenizer())], batch, context.accelerator,
                                                 f"ppl blocks ({label})" if context.progress else None, precision)
    sliding = perplexity_sliding(model, stream, config.evaluate.window, config.evaluate.stride, batch,
                                 context.accelerator, progress=f"ppl sliding ({label})" if context.progress else None,
                                 precision=precision)
    if block_nll_path is not None and context.main:
        write_array_atomic(block_nll_path, blocks.sequence_nll / np.maximum(blocks.sequence_tokens, 1))
    # Bits per byte over the targets ppl_blocks_no_eos scores: the text's bytes, end-of-text has none.
    text_bytes = predicted_bytes(family.tokenizer(), stream, config.eval_block_size)
    return {"ppl_blocks": blocks.perplexity, "ppl_blocks_no_eos": no_eos.perplexity, "ppl_sliding": sliding.perplexity,
            "bits_per_byte": float(no_eos.sequence_nll.sum() / math.log(2) / max(text_bytes, 1)),
            "predicted_bytes": text_bytes,
            "blocks": blocks.summary(), "blocks_no_eos": no_eos.summary(), "sliding": sliding.summary()}


def corpus_text_metrics(config: PipelineConfig, texts: list[str]) -> dict:
    """Self-BLEU and distinct-n of a corpus of texts, with the settings they were computed with."""
    settings = config.evaluate
    encoded = EncodedCorpus.from_texts(texts, settings.text_tokenization)
    metrics: dict[str, float | int | str | None] = {
        "text_tokenization": settings.text_tokenization, "samples": encoded.num_samples,
        "self_bleu_samples": None, "self_bleu_seed": config.seed, "self_bleu_smoothing": settings.self_bleu_smoothing}
    if encoded.num_samples >= 2:
        subset = encoded
        if settings.self_bleu_samples is not None and settings.self_bleu_samples < encoded.num_samples:
            # The same indices every generation (corpora keep their size): paired comparisons.
            subset = encoded.subset(subsample_indices(encoded.num_samples, settings.self_bleu_samples, config.seed, "self-bleu"))
        scores = self_bleu_scores(subset, settings.self_bleu_max_n, settings.self_bleu_smoothing)
        metrics[self_bleu_column(settings.self_bleu_max_n)] = float(np.mean(scores))
        metrics["self_bleu_samples"] = subset.num_samples
    for n in range(1, settings.distinct_max_n + 1):
        metrics[distinct_column(n)] = distinct_n(encoded, n)
        metrics[distinct_column(n, "li")] = distinct_n_li(encoded, n)
        metrics[distinct_column(n, "per_sample")] = distinct_n_per_sample(encoded, n)
    return metrics


def synthetic_text_metrics(context: Context, synthetic) -> dict:
    config = context.config
    metrics = corpus_text_metrics(config, synthetic["text"])
    human_texts = read_records(context.run.human_train)["text"]
    survival, rare = rare_ngram_survival(human_texts, synthetic["text"], config.evaluate.rare_ngram_n,
                                         config.evaluate.rare_ngram_max_count, config.evaluate.text_tokenization)
    metrics.update(rare_survival=survival, rare_ngrams=rare)
    return metrics


def synthetic_tails(context: Context, index: int, model, synthetic, values_path: Path) -> dict:
    """Per-sample perplexity of the corpus under the generation-0 model, and its quantiles."""
    config = context.config
    if not config.evaluate.tails:
        return {}
    scorer = model
    if index > 0:
        scorer = context.load_weights(context.run.generation(0).model).to(context.accelerator.device)
    synthetic = as_read_by(context, synthetic, index, context.family_of(0))  # generation 0's tokens
    values = sample_perplexities(scorer, [np.asarray(ids, dtype=np.int64) for ids in synthetic["input_ids"]],
                                 config.evaluate.batch_size, context.accelerator,
                                 progress="tails" if context.progress else None,
                                 precision=config.evaluate.mixed_precision)
    if context.main:
        write_array_atomic(values_path, values)
    return {tail_column(q): tail_quantile(q)(values) for q in TAIL_QUANTILES} | {
        "scored_by": context.run.generation(0).model.relative_to(context.run.root).as_posix(), "samples": int(np.isfinite(values).sum())}


def synthetic_mauve(context: Context, index: int, synthetic) -> dict:
    """MAUVE between a seeded sample of the corpus and one of held-out human blocks, both embedded
    by the run's fixed featurizer (the base model, or evaluate.mauve_featurizer)."""
    config = context.config
    settings = config.evaluate
    samples = min(settings.mauve_samples, len(synthetic), heldout_block_count(context))
    # Keyed draws: the same records every generation (paired comparisons), independent of other draws.
    chosen = np.sort(rng(config.seed, "mauve", "synthetic").choice(len(synthetic), samples, replace=False))
    # In the featurizer's family (the base's, chain[0]'s), like the human blocks it is compared with.
    chosen_records = as_read_by(context, synthetic.select(chosen), index, context.family(0))
    synthetic_ids = [np.asarray(ids, dtype=np.int64) for ids in chosen_records["input_ids"]]
    featurizer = MauveFeaturizer.for_run(context)
    features = featurizer.features(synthetic_ids, "mauve features (synthetic)" if context.progress else None)
    human = heldout_features(context, featurizer, _heldout_features_key(context, featurizer, samples))
    return mauve_between(features, human, settings.mauve_clusters, config.seed) | {
        "samples": samples, "featurizer": featurizer.label, "feature_dimension": int(features.shape[1])}


def heldout_block_count(context: Context) -> int:
    """The run's held-out blocks (of ``eval_block_size`` tokens), as its human stage recorded them."""
    return int(read_manifest(context.run.human_manifest)["heldout"]["blocks"])


def heldout_features(context: Context, featurizer: MauveFeaturizer, key: dict) -> np.ndarray:
    """MAUVE features of a keyed draw of ``key["samples"]`` held-out human blocks, the same every
    generation: read back from what :func:`ensure_human_mauve` saved under the same ``key`` (same
    blocks, featurizer, batches and precision: the same numbers), else computed."""
    run, samples = context.run, key["samples"]
    saved = _saved_heldout_features(run, key)
    if saved is not None:
        return saved
    config = context.config
    blocks = [block for block, _ in iter_blocks(TokenStream.from_parquet(run.human_heldout), config.eval_block_size)]
    chosen = np.sort(rng(config.seed, "mauve", "human").choice(len(blocks), samples, replace=False))
    return featurizer.features([blocks[int(i)] for i in chosen], "mauve features (human)" if context.progress else None)


def _saved_heldout_features(run, key: dict) -> np.ndarray | None:
    """The features ensure_human_mauve saved, if its record (checksummed) names these settings and
    the file's sha256; None for anything else, so they are computed again (never a crash)."""
    if not (run.human_mauve.is_file() and run.human_mauve_features.is_file()):
        return None
    try:
        saved = read_manifest(run.human_mauve).get("heldout_features", {})
        if saved.get("key") != key or saved.get("sha256") != sha256_file(run.human_mauve_features):
            return None
        features = np.load(run.human_mauve_features, allow_pickle=False)  # never unpickles
    except (LmcollapseError, OSError, ValueError):
        return None
    return features if features.dtype == np.float32 and features.ndim == 2 and len(features) == key["samples"] else None


def _heldout_features_key(context: Context, featurizer: MauveFeaturizer, samples: int) -> dict:
    config = context.config
    return {"samples": samples, "seed": config.seed, "featurizer": featurizer.label,
            "eval_block_size": config.eval_block_size, "batch_size": config.evaluate.batch_size,
            "mixed_precision": config.evaluate.mixed_precision, "processes": context.accelerator.num_processes}


def ensure_human_mauve(context: Context) -> None:
    """MAUVE of human text against human text: a keyed draw of the fine-tuning blocks against the
    held-out blocks every generation is compared with (the ceiling a corpus is read against, the
    ``human`` row's ``mauve``), in ``human/mauve.json``; the held-out side's features are kept
    beside it, so no generation embeds them again."""
    run, config = context.run, context.config
    if not config.evaluate.mauve or run.human_mauve.is_file():
        return
    train = read_records(run.human_train)
    samples = min(config.evaluate.mauve_samples, len(train), heldout_block_count(context))
    featurizer = MauveFeaturizer.for_run(context)
    chosen = np.sort(rng(config.seed, "mauve", "human-train").choice(len(train), samples, replace=False))
    train_ids = [np.asarray(ids, dtype=np.int64) for ids in train.select(chosen)["input_ids"]]
    key = _heldout_features_key(context, featurizer, samples)
    heldout = heldout_features(context, featurizer, key)
    features = featurizer.features(train_ids, "mauve features (human train)" if context.progress else None)
    if context.main:
        write_array_atomic(run.human_mauve_features, heldout)
        saved = {"key": key, "file": run.human_mauve_features.name,
                 "sha256": sha256_file(run.human_mauve_features)}
        write_manifest(run.human_mauve, mauve_between(features, heldout, config.evaluate.mauve_clusters, config.seed) | {
            "samples": samples, "featurizer": featurizer.label, "compared": "human train blocks vs held-out blocks",
            "heldout_features": saved})
    context.accelerator.wait_for_everyone()


def watermark_cost(context: Context, index: int, model, synthetic) -> dict:
    """With generate.watermark: the corpus's perplexity under the model that wrote it, without the
    bias, each continuation after its own prompt, against what unbiased sampling from that model
    would average at the same contexts (exp of the mean entropy: the expected NLL of a token drawn
    without the watermark, end-of-text kept out as min_new_tokens kept it out); and the share of
    the corpus the watermark detector finds (z above decontaminate.watermark_threshold)."""
    config = context.config
    family = context.family_of(index)
    sources = [read_records(context.run.generation(index).train_set)]
    if config.generate.prompts == "human":
        sources.append(read_records(family.run.human_train))
    prompts = {rid: ids for records in sources for rid, ids in zip(records["id"], records["input_ids"])}
    cut = config.generate.prompt_tokens
    contexts = [np.asarray(prompts[parent][-cut:] if cut else prompts[parent], dtype=np.int64) for parent in synthetic["parent"]]
    continuations = [np.asarray(ids, dtype=np.int64) for ids in synthetic["input_ids"]]
    stats = position_statistics(model, [np.concatenate([c, x]) for c, x in zip(contexts, continuations)],
                                config.evaluate.batch_size, context.accelerator,
                                "watermark cost" if context.progress else None, config.evaluate.mixed_precision,
                                first_scored=[len(c) for c in contexts], excluded=(family.tokenizer().eos_token_id,),
                                excluded_steps=config.generate.min_new_tokens)
    observed, expected, _, tokens = stats.sum(axis=0)
    z = watermark_z_scores(continuations, config.generate, config.seed, model.config)
    return {"watermark_ppl": math.exp(-observed / tokens), "watermark_ppl_unbiased": math.exp(-expected / tokens),
            "watermark_detected": float((z > config.decontaminate.watermark_threshold).mean()),
            "watermark_z_median": float(np.median(z)), "tokens": int(tokens)}


def evaluate_generation(context: Context, index: int, model, synthetic) -> dict[str, dict]:
    """Held-out perplexity, the corpus's text metrics and its tails, each read back when done."""
    generation = context.run.generation(index)
    config = context.config
    optional = {}  # results a setting turns on, whose files exist only then
    if config.evaluate.mauve:
        optional["mauve"] = ensure_json(context, generation.mauve, lambda: synthetic_mauve(context, index, synthetic))
    if config.generate.watermark:
        optional["watermark"] = ensure_json(context, generation.watermark, lambda: watermark_cost(context, index, model, synthetic))
    return {
        "perplexity": ensure_json(context, generation.perplexity,
                                  lambda: heldout_perplexity(context, model, generation.name, generation.heldout_block_nll,
                                                             context.family_of(index))),
        "text_metrics": ensure_json(context, generation.text_metrics, lambda: synthetic_text_metrics(context, synthetic)),
        "tails": ensure_json(context, generation.tails,
                             lambda: synthetic_tails(context, index, model, synthetic, generation.tails_values)),
        **optional,
    }


def generation_row(context: Context, index: int, train_set, train_log: dict, shards: list[dict],
                   results: dict[str, dict], timings: dict) -> dict:
    """The generation's row of ``metrics.csv``, built from the column catalogue (metrics/columns.py)."""
    report = context.run.generation(index).decontamination
    return metrics_row(GenerationOutcome(
        index, context.config.seed, train_set, source_counts(train_set), train_log, shards, results, timings,
        read_json(report) if report.is_file() else None,
        context.config.model.entry_at(index) if context.config.model.chain is not None else None))
