"""The training stage: generation k's model, trained from ``model.init``'s start on its training
set (``engine/training.py``), resumed from its checkpoints, or read back once saved.

    model, train_log = ensure_trained_model(context, index, train_set, train_sha)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmcollapse.config import PipelineConfig
from lmcollapse.data.records import read_records
from lmcollapse.data.regimes import loss_weights, source_counts
from lmcollapse.engine.checkpointer import Checkpointer
from lmcollapse.engine.modeling import save_model, weights_sha256
from lmcollapse.engine.training import train_model
from lmcollapse.run.atomic import read_json
from lmcollapse.run.layout import RunDir
from lmcollapse.stages.context import Context


def ensure_trained_model(context: Context, index: int, train_set, train_sha: str):
    """The generation's trained model (on the accelerator's device) and its train log: trained
    from ``model.init``'s start, resumed from the last checkpoint, or read back when saved."""
    run, config, accelerator = context.run, context.config, context.accelerator
    generation = run.generation(index)
    if generation.model.is_dir():
        model = context.load_weights(generation.model)
        return model.to(accelerator.device), read_json(generation.train_log)
    family = context.family_of(index)
    tokenizer = family.tokenizer()
    start = start_model(run, config, index)
    start_sha = weights_sha256(start)
    model = context.load_weights(start)
    validation = None
    if config.train.select == "best-validation":
        validation = [np.asarray(ids, dtype=np.int64) for ids in read_records(family.run.human_validation)["input_ids"]]
    sources = source_counts(train_set)
    context.say(f"{generation.name}: training on {len(train_set)} blocks "
                f"({', '.join(f'{v} {k}' for k, v in sorted(sources.items()))}) from {start.relative_to(run.root)}")
    sequences = [np.asarray(ids, dtype=np.int64) for ids in train_set["input_ids"]]
    model, outcome = train_model(
        model, sequences, config.train, seed=config.seed, generation=index,
        checkpoint_dir=generation.checkpoints, accelerator=accelerator, data_fingerprint=train_sha,
        pad_id=tokenizer.pad_token_id, weights=loss_weights(config, train_set), progress=context.progress,
        validation=validation)
    train_log = {"steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds,
                 "final_loss": outcome.final_loss, "resumed_from_step": outcome.resumed_from_step,
                 "started_from": str(start.relative_to(run.root)), "started_from_sha256": start_sha,
                 "selection": outcome.selection, "log": outcome.log}
    if context.main:
        save_model(model, tokenizer, generation.model, {generation.train_log.name: json.dumps(train_log, indent=1)})
        Checkpointer(generation.checkpoints).remove()
    accelerator.wait_for_everyone()
    return model.to(accelerator.device), train_log


def start_model(run: RunDir, config: PipelineConfig, index: int) -> Path:
    """The weights generation ``index`` starts training from (``model.init``), in its own family:
    ``base``, the family's base; ``generation-0``, the family's first generation (generation 0
    without a chain), or its base when ``index`` is that first generation; ``previous``, generation
    ``index - 1`` (the config refuses it across a family boundary)."""
    model = config.model
    first = model.first_generation_of(index)
    if model.init == "base" or index == first:
        return run.family(model.family_position(index)).base_model
    return run.generation(first if model.init == "generation-0" else index - 1).model
