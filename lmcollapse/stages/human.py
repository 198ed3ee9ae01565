"""The human-data stage: the train, validation and held-out splits, tokenized with the base's
tokenizer and cut into blocks with provenance, in ``human/`` with its dataset card and manifest.

    text = HumanText.read(context.corpus)                 # the lines, from where preflight located them
    blocks = HumanBlocks.cut(config, tokenizer, text)     # raises before anything is written
    write_human(context, text, blocks, started)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lmcollapse.config import PipelineConfig
from lmcollapse.data.carving import separate_validation_split
from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.data.locate import SplitSource, check_same_source
from lmcollapse.data.read import cut_into_blocks, load_split_lines, tokenize_lines
from lmcollapse.data.records import HUMAN, make_records, write_records
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import sha256_file
from lmcollapse.run.integrity import lineage_record
from lmcollapse.run.manifests import PIPELINE_DIGEST, pipeline_digest, write_manifest
from lmcollapse.run.seeding import rng as derive_rng
from lmcollapse.run.seeding import subsample_indices
from lmcollapse.stages.cards import CARD, write_human_card
from lmcollapse.stages.context import Context
from lmcollapse.stages.evaluate import corpus_text_metrics


@dataclass(frozen=True)
class HumanText:
    """The train and held-out splits: where they were found (one place) and their lines."""

    train_source: SplitSource
    heldout_source: SplitSource
    train: object  # a datasets.Dataset of lines (load_split_lines)
    heldout: object

    @classmethod
    def read(cls, corpus: CorpusPlan) -> HumanText:
        check_same_source(corpus.train, corpus.heldout, allow_mixed=corpus.config.data.mixed_sources)
        return cls(corpus.train, corpus.heldout, load_split_lines(corpus.train), load_split_lines(corpus.heldout))


@dataclass(frozen=True)
class HumanBlocks:
    """Both splits as token streams and as blocks (at least one each, or a one-line error)."""

    train_stream: np.ndarray
    heldout_stream: np.ndarray
    train: np.ndarray
    heldout: np.ndarray

    @classmethod
    def cut(cls, config: PipelineConfig, tokenizer, text: HumanText) -> HumanBlocks:
        data = config.data
        train_stream, heldout_stream = tokenize_lines(text.train, tokenizer), tokenize_lines(text.heldout, tokenizer)
        return cls(train_stream, heldout_stream,
                   cut_into_blocks(train_stream, data.block_size, f"{data.train_split} split"),
                   cut_into_blocks(heldout_stream, config.eval_block_size, f"{data.heldout_split} split"))


def write_human(context: Context, text: HumanText, blocks: HumanBlocks, started: float) -> None:
    """The human blocks (training subset, held-out blocks, validation blocks), decoded with the
    run's saved tokenizer, their card, and the manifest last."""
    run, config, data = context.run, context.config, context.config.data
    kept = training_subset(config, len(blocks.train))
    heldout_blocks = blocks.heldout if data.max_heldout_blocks is None else blocks.heldout[: data.max_heldout_blocks]
    tokenizer = context.tokenizer()
    train = _human_records(tokenizer, blocks.train[kept], kept, data.train_split)
    heldout = _human_records(tokenizer, heldout_blocks, np.arange(len(heldout_blocks)), data.heldout_split)
    validation, validation_record = validation_records(context, tokenizer, blocks.train, kept)
    run.human.mkdir(parents=True, exist_ok=True)
    write_records(train, run.human_train)
    write_records(heldout, run.human_heldout)
    if validation is not None:
        write_records(validation, run.human_validation)
    whole = context.run_config or config  # the run's config (a chain family's stage has its own)
    write_human_card(whole, run.human, {"train": len(train), "test": len(heldout),
                                        **({"validation": len(validation)} if validation is not None else {})},
                     config.model.name if whole.model.chain is not None else None)
    context.say(f"human: {len(train)} training blocks of {data.block_size} tokens "
                f"(of {len(blocks.train)}), {len(heldout)} held-out blocks of {config.eval_block_size}")
    write_manifest(run.human_manifest, {
        **lineage_record(run, None),
        # the run's settings; a chain's further families (family-NN/) have no pipeline.yaml: the run's human records it
        **({PIPELINE_DIGEST: pipeline_digest(run.pipeline_file)} if run.pipeline_file.is_file() else {}),
        "train": {**_split_record(data.train_split, text.train_source, len(train)),
                  "blocks_in_split": len(blocks.train), "tokens_in_split": int(len(blocks.train_stream))},
        "heldout": {**_split_record(data.heldout_split, text.heldout_source, len(heldout)),
                    "tokens_in_split": int(len(blocks.heldout_stream))},
        **({"validation": validation_record} if validation is not None else {}),
        "files": {path.name: sha256_file(path) for path in (run.human_train, run.human_heldout, run.human_validation,
                                                             run.human / CARD)
                  if path != run.human_validation or validation is not None},
        "text_metrics": corpus_text_metrics(config, train["text"]), "seconds": time.perf_counter() - started})


def _split_record(split: str, source: SplitSource, count: int) -> dict:
    return {"split": split, "source": source.describe(), "provenance": source.record(), "blocks": count,
            "corpus_sha256": {str(p): sha256_file(p) for p in source.files}}


def training_subset(config: PipelineConfig, num_blocks: int) -> np.ndarray:
    """Indices of the train split's blocks that generation 0 trains on (``data.max_train_blocks``)."""
    data = config.data
    if data.max_train_blocks is not None and data.max_train_blocks < num_blocks:
        return subsample_indices(num_blocks, data.max_train_blocks, data.subset_seed, "training-subset")
    return np.arange(num_blocks)


def validation_records(context: Context, tokenizer, train_blocks: np.ndarray, kept: np.ndarray):
    """The human validation blocks of ``train.select=best-validation`` (None without it): disjoint
    from the training blocks and the held-out split, by construction."""
    config, data = context.config, context.config.data
    if config.train.select != "best-validation":
        return None, None
    split = separate_validation_split(config)
    if split is None:  # carved from the train split: its blocks outside the training subset
        pool = np.setdiff1d(np.arange(len(train_blocks)), kept)
        if len(pool) == 0:
            raise LmcollapseError(
                f"train.select=best-validation needs validation blocks, but all {len(train_blocks)} blocks of the "
                f"{data.train_split} split are training blocks: set data.max_train_blocks below {len(train_blocks)} "
                "or data.validation_split=<another split>")
        blocks, source = train_blocks, f"{data.train_split} split, blocks outside the training subset"
        files = None  # the train split's files, recorded under "train"
    else:
        located = context.corpus.validation
        stream = tokenize_lines(load_split_lines(located), tokenizer)
        blocks, source = cut_into_blocks(stream, data.block_size, f"{split} split"), located.describe()
        pool = np.arange(len(blocks))
        files = {str(p): sha256_file(p) for p in located.files}
    if data.max_validation_blocks is not None and data.max_validation_blocks < len(pool):
        pool = np.sort(derive_rng(data.subset_seed, "validation").permutation(pool)[:data.max_validation_blocks])
    records = _human_records(tokenizer, blocks[pool], pool, split or data.train_split)
    context.say(f"human: {len(records)} validation blocks ({source})")
    return records, {"split": split or data.train_split, "source": source, "blocks": len(records),
                     "carved_from_train_split": split is None, **({"corpus_sha256": files} if files else {})}


def _human_records(tokenizer, blocks: np.ndarray, indices: np.ndarray, split: str):
    count = len(blocks)
    return make_records({
        "id": [f"{HUMAN}-{split}-{i:06d}" for i in indices], "source": [HUMAN] * count,
        "generation": [None] * count, "parent": [None] * count, "model": [None] * count,
        "input_ids": blocks.astype(np.int32).tolist(),
        "text": tokenizer.batch_decode(blocks.tolist(), skip_special_tokens=True),
    })
