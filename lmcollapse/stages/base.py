"""The base stage: the starting model with its tokenizer, in ``base/`` with its manifest, and its
zero-shot held-out perplexity (``base/eval.json``).

The base is a preset pretrained once and copied from the cache (pretrain.py), a preset with fresh
weights and a tokenizer trained on the human train split, or a pretrained model loaded with
``from_pretrained``. Its tokenizer decides the human blocks, so the human-data stage (human.py)
is prepared with it: everything is computed and checked (corpus readable, at least one block per
split) before the first file of either is written, so bad input leaves no half-made stage.

    ensure_base_and_human(context, pretrained)
    ensure_base_eval(context)
"""

from __future__ import annotations

import shutil
import time

from lmcollapse.engine.modeling import (
    build_preset_model,
    count_parameters,
    load_model,
    load_tokenizer,
    save_model,
    train_bpe_tokenizer,
)
from lmcollapse.run.atomic import atomic_path, sha256_file, sha256_tree
from lmcollapse.run.manifests import environment_record, write_manifest
from lmcollapse.run.seeding import derive_seed
from lmcollapse.stages.base_cache import PretrainedBase
from lmcollapse.stages.context import Context
from lmcollapse.stages.evaluate import heldout_perplexity
from lmcollapse.stages.human import HumanBlocks, HumanText, write_human
from lmcollapse.stages.preflight import check_positions_of
from lmcollapse.stages.pretrain import check_entry


def ensure_base_and_human(context: Context, pretrained: PretrainedBase | None = None) -> None:
    """The base model and tokenizer, then the human blocks, each with its manifest."""
    run = context.run
    base_done, human_done = run.base_manifest.is_file(), run.human_manifest.is_file()
    if (base_done and human_done) or not context.main:
        context.accelerator.wait_for_everyone()
        return
    started = time.perf_counter()
    text = HumanText.read(context.corpus)
    model, tokenizer = (None, context.tokenizer()) if base_done else base_tokenizer(context, pretrained, text)
    blocks = HumanBlocks.cut(context.config, tokenizer, text)
    if not base_done:
        write_base(context, pretrained, model, tokenizer, text, started)
        context.forget_tokenizer()  # reload the saved one: what every later stage uses
    write_human(context, text, blocks, started)
    context.accelerator.wait_for_everyone()


def base_tokenizer(context: Context, pretrained: PretrainedBase | None, text: HumanText):
    """The base's tokenizer, and its model where loading the tokenizer loads the model too."""
    config = context.config
    if pretrained is not None:
        context.say(f"base: the pretrained {config.model.name} from the cache ({pretrained.root})")
        return None, load_tokenizer(pretrained.model)
    if config.model.is_preset:
        shape = config.model.architecture()  # model.vocab_size and model.max_positions applied
        context.say(f"base: training a {shape['vocab_size']}-token byte-level BPE tokenizer on "
                    f"{text.train_source.describe()}")
        return None, train_bpe_tokenizer(text.train["text"], int(shape["vocab_size"]),
                                         int(shape["max_position_embeddings"]), config.model.family)
    context.say(f"base: loading {config.model.name} with from_pretrained")
    model, tokenizer = load_model(config.model.name, config.model.attn_implementation,
                                  trust_remote_code=config.model.trust_remote_code)
    check_positions_of(config, model.config.to_dict())
    return model, tokenizer


def write_base(context: Context, pretrained: PretrainedBase | None, model, tokenizer, text: HumanText,
               started: float) -> None:
    """``base/model`` (the cache entry copied byte for byte, or the model saved) and its manifest."""
    run, config = context.run, context.config
    if pretrained is not None:
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
        return
    if model is None:
        model = build_preset_model(config.model, tokenizer, seed=derive_seed(config.seed, "init"))
    save_model(model, tokenizer, run.base_model)
    trained_on = {str(p): sha256_file(p) for p in text.train_source.files} if config.model.is_preset else None
    write_manifest(run.base_manifest, {
        "kind": "preset" if config.model.is_preset else "pretrained", "source": config.model.name,
        **({} if config.model.is_preset else {"trust_remote_code": config.model.trust_remote_code}),
        "parameters": count_parameters(model), "vocab_size": len(tokenizer), "tokenizer_trained_on": trained_on,
        "files": sha256_tree(run.base_model), "seconds": time.perf_counter() - started, **environment_record()})


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
