"""The first two stages of a run: the base model with its tokenizer, and the human data.

``base/``   the starting model: a preset pretrained once and copied from the cache, a preset
            with fresh weights and a tokenizer trained on the human train split, or a pretrained
            model loaded with ``from_pretrained``; its zero-shot held-out perplexity (``eval.json``);
``human/``  the train, validation and held-out splits, tokenized with the base's tokenizer and cut
            into blocks with provenance.

    ensure_base_and_human(context, pretrained)
    ensure_base_eval(context)
"""

from __future__ import annotations

import shutil
import time

import numpy as np

from lmcollapse import corpus
from lmcollapse.atomic import atomic_path, sha256_file, sha256_tree
from lmcollapse.cards import CARD, write_human_card
from lmcollapse.config import PipelineConfig
from lmcollapse.context import Context
from lmcollapse.errors import LmcollapseError
from lmcollapse.evaluation import corpus_text_metrics, heldout_perplexity
from lmcollapse.integrity import lineage_record
from lmcollapse.manifests import environment_record, write_manifest
from lmcollapse.modeling import (
    build_preset_model,
    count_parameters,
    load_model,
    load_tokenizer,
    save_model,
    train_bpe_tokenizer,
)
from lmcollapse.preflight import check_positions_of, separate_validation_split
from lmcollapse.pretrain import check_entry
from lmcollapse.records import HUMAN, make_records, write_records
from lmcollapse.seeding import derive_seed, subsample_indices
from lmcollapse.seeding import rng as derive_rng


def ensure_base_and_human(context: Context, pretrained=None) -> None:
    """The base model and tokenizer, then the human blocks, each with its manifest.

    Everything is computed and checked (corpus readable, at least one block per split) before
    the first file is written, so bad input fails without leaving a half-made stage.
    """
    run, config = context.run, context.config
    base_done, human_done = run.base_manifest.is_file(), run.human_manifest.is_file()
    if (base_done and human_done) or not context.main:
        context.accelerator.wait_for_everyone()
        return
    started = time.perf_counter()
    data = config.data
    train_source, heldout_source, train_lines, heldout_lines = human_text(config)
    model = None
    if base_done:
        tokenizer = context.tokenizer()
    elif pretrained is not None:
        context.say(f"base: the pretrained {config.model.name} from the cache ({pretrained.root})")
        tokenizer = load_tokenizer(pretrained.model)
    elif config.model.is_preset:
        shape = config.model.architecture()  # model.vocab_size and model.max_positions applied
        context.say(f"base: training a {shape['vocab_size']}-token byte-level BPE tokenizer on {train_source.describe()}")
        tokenizer = train_bpe_tokenizer(train_lines["text"], int(shape["vocab_size"]), int(shape["max_position_embeddings"]),
                                        config.model.family)
    else:
        context.say(f"base: loading {config.model.name} with from_pretrained")
        model, tokenizer = load_model(config.model.name, config.model.attn_implementation,
                                      trust_remote_code=config.model.trust_remote_code)
        check_positions_of(config, model.config.to_dict())

    train_stream = corpus.tokenize_lines(train_lines, tokenizer)
    heldout_stream = corpus.tokenize_lines(heldout_lines, tokenizer)
    train_blocks = corpus.cut_into_blocks(train_stream, data.block_size, f"{data.train_split} split")
    heldout_blocks = corpus.cut_into_blocks(heldout_stream, config.eval_block_size, f"{data.heldout_split} split")

    if not base_done and pretrained is not None:
        entry = check_entry(pretrained)
        with atomic_path(run.base_model) as scratch:  # the run keeps its own copy, byte for byte
            shutil.copytree(pretrained.model, scratch)
        write_manifest(run.base_manifest, {
            "kind": "pretrained-preset", "source": config.model.name, "parameters": entry["parameters"],
            "vocab_size": entry["vocab_size"], "tokenizer_trained_on": entry["corpus_sha256"],
            "pretrained": {"cache_entry": str(pretrained.root), "key": pretrained.key,
                           "entry_manifest_sha256": entry["manifest_sha256"], "corpus": entry["corpus"],
                           "blocks": entry["blocks"], "block_size": entry["block_size"], "steps": entry["steps"],
                           "tokens": entry["tokens"], "final_loss": entry["final_loss"], "seconds": entry["seconds"]},
            "files": sha256_tree(run.base_model), "seconds": time.perf_counter() - started, **environment_record()})
        context.forget_tokenizer()
    elif not base_done:
        if model is None:
            model = build_preset_model(config.model, tokenizer, seed=derive_seed(config.seed, "init"))
        save_model(model, tokenizer, run.base_model)
        write_manifest(run.base_manifest, {
            "kind": "preset" if config.model.is_preset else "pretrained", "source": config.model.name,
            **({} if config.model.is_preset else {"trust_remote_code": config.model.trust_remote_code}),
            "parameters": count_parameters(model), "vocab_size": len(tokenizer),
            "tokenizer_trained_on": {str(p): sha256_file(p) for p in train_source.files} if config.model.is_preset else None,
            "files": sha256_tree(run.base_model), "seconds": time.perf_counter() - started, **environment_record()})
        context.forget_tokenizer()  # reload the saved one: what every later stage uses

    kept = training_subset(config, len(train_blocks))
    if data.max_heldout_blocks is not None:
        heldout_blocks = heldout_blocks[: data.max_heldout_blocks]
    tokenizer = context.tokenizer()
    train = _human_records(tokenizer, train_blocks[kept], kept, data.train_split)
    heldout = _human_records(tokenizer, heldout_blocks, np.arange(len(heldout_blocks)), data.heldout_split)
    validation, validation_record = validation_records(context, tokenizer, train_blocks, kept)
    run.human.mkdir(parents=True, exist_ok=True)
    write_records(train, run.human_train)
    write_records(heldout, run.human_heldout)
    if validation is not None:
        write_records(validation, run.human_validation)
    write_human_card(config, run.human, {"train": len(train), "test": len(heldout),
                                         **({"validation": len(validation)} if validation is not None else {})})
    context.say(f"human: {len(train)} training blocks of {data.block_size} tokens "
                f"(of {len(train_blocks)}), {len(heldout)} held-out blocks of {config.eval_block_size}")
    write_manifest(run.human_manifest, {
        **lineage_record(run, None),
        "train": {"split": data.train_split, "source": train_source.describe(), "provenance": train_source.record(),
                  "blocks": len(train),
                  "blocks_in_split": len(train_blocks), "tokens_in_split": int(len(train_stream)),
                  "corpus_sha256": {str(p): sha256_file(p) for p in train_source.files}},
        "heldout": {"split": data.heldout_split, "source": heldout_source.describe(),
                    "provenance": heldout_source.record(), "blocks": len(heldout),
                    "tokens_in_split": int(len(heldout_stream)),
                    "corpus_sha256": {str(p): sha256_file(p) for p in heldout_source.files}},
        **({"validation": validation_record} if validation is not None else {}),
        "files": {path.name: sha256_file(path) for path in (run.human_train, run.human_heldout, run.human_validation,
                                                             run.human / CARD)
                  if path != run.human_validation or validation is not None},
        "text_metrics": corpus_text_metrics(config, train["text"]), "seconds": time.perf_counter() - started})
    context.accelerator.wait_for_everyone()


def human_text(config: PipelineConfig):
    """The train and held-out splits: their sources (found in one place) and their lines."""
    data = config.data
    train_source, heldout_source = corpus.locate_data_splits(config, data.train_split, data.heldout_split)
    corpus.check_same_source(train_source, heldout_source, allow_mixed=data.mixed_sources)
    return train_source, heldout_source, corpus.load_split_lines(train_source), corpus.load_split_lines(heldout_source)


def training_subset(config: PipelineConfig, num_blocks: int) -> np.ndarray:
    """Indices of the train split's blocks that generation 0 trains on (``data.max_train_blocks``)."""
    data = config.data
    if data.max_train_blocks is not None and data.max_train_blocks < num_blocks:
        return subsample_indices(num_blocks, data.max_train_blocks, data.subset_seed)
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
        (located,) = corpus.locate_data_splits(config, split)
        stream = corpus.tokenize_lines(corpus.load_split_lines(located), tokenizer)
        blocks, source = corpus.cut_into_blocks(stream, data.block_size, f"{split} split"), located.describe()
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


def ensure_base_eval(context: Context) -> None:
    """Zero-shot perplexity of the base model: the paper's 'about 115' reference point."""
    path = context.run.base_eval
    if path.is_file():
        return
    model = context.load_weights(context.run.base_model).to(context.accelerator.device)
    result = heldout_perplexity(context, model, "base model")
    if context.main:
        write_manifest(path, result | {"mixed_precision": context.config.evaluate.mixed_precision})
    context.accelerator.wait_for_everyone()
