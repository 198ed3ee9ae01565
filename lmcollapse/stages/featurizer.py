"""The model that embeds texts for MAUVE: one for the whole run, so every generation is measured
in the same feature space.

By default the run's base model (the weights every generation descends from, never fine-tuned)
embeds the token ids the run already has; ``evaluate.mauve_featurizer`` names another model (a
folder or hub id), which embeds the decoded text with its own tokenizer.

    featurizer = MauveFeaturizer.for_run(context)
    features = featurizer.features(list_of_id_arrays, "mauve features")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmcollapse.engine.modeling import load_model, position_limit, weights_sha256
from lmcollapse.metrics.mauve_score import final_token_features
from lmcollapse.stages.context import Context


@dataclass
class MauveFeaturizer:
    context: Context
    model: object
    label: str
    tokenizer: object = None  # a named featurizer's own tokenizer (None: the run's ids are used as they are)

    @classmethod
    def for_run(cls, context: Context) -> MauveFeaturizer:
        config, run = context.config, context.run
        name = config.evaluate.mauve_featurizer
        if name is None:
            model = context.load_weights(run.base_model)
            label = f"base model (weights sha256:{weights_sha256(run.base_model)})"
            return cls(context, model.to(context.accelerator.device), label)
        model, tokenizer = load_model(name, config.model.attn_implementation,
                                      trust_remote_code=config.model.trust_remote_code)
        return cls(context, model.to(context.accelerator.device), name, tokenizer)

    def features(self, sequences: list[np.ndarray], progress: str | None) -> np.ndarray:
        if self.tokenizer is not None:  # another vocabulary: through the text
            texts = self.context.tokenizer().batch_decode([s.tolist() for s in sequences], skip_special_tokens=True)
            encoded = self.tokenizer(texts, truncation=True, max_length=position_limit(self.model))["input_ids"]
            sequences = [np.asarray(ids or [self.tokenizer.eos_token_id], dtype=np.int64) for ids in encoded]
        evaluate = self.context.config.evaluate
        return final_token_features(self.model, sequences, evaluate.batch_size, self.context.accelerator, progress,
                                    evaluate.mixed_precision)
