"""The run's watermark (Kirchenbauer et al., ICML 2023), through transformers: the settings of
``generate.watermark*`` with a key derived from the run's seed, the logits processor that applies
it while generating, and the z-score of a text under it (transformers' ``WatermarkDetector``).

    settings = watermarking_config(config.generate, seed)       # a transformers WatermarkingConfig
    z = watermark_z_scores(sequences, config.generate, seed, model_config)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from lmcollapse.config.stage_sections import GenerateConfig
from lmcollapse.run.seeding import derive_seed


def watermark_key(seed: int) -> int:
    """The hashing key of a run's watermark: from its seed alone, so every generation of the run
    (and a resumed one) writes the same watermark; below 2^31, so key x token id stays in int64."""
    return derive_seed(seed, "watermark") % (2**31 - 1) + 1


def watermarking_config(config: GenerateConfig, seed: int):
    from transformers import WatermarkingConfig

    return WatermarkingConfig(greenlist_ratio=config.watermark_greenlist_ratio, bias=config.watermark_bias,
                              hashing_key=watermark_key(seed), seeding_scheme=config.watermark_seeding_scheme,
                              context_width=config.watermark_context_width)


def watermark_record(config: GenerateConfig, seed: int) -> dict:
    """What the generation config beside the shards says about the watermark (the key included)."""
    return watermarking_config(config, seed).to_dict()


def watermark_z_scores(sequences: Sequence[np.ndarray], config: GenerateConfig, seed: int, model_config) -> np.ndarray:
    """Each sequence's z-score for the run's watermark: (green tokens - gamma T) / sqrt(T gamma (1 - gamma))
    over its T scored tokens; 0 for a sequence too short to score."""
    from transformers import WatermarkDetector

    if model_config.bos_token_id is None:  # Qwen2: no BOS; the detector compares with it (None breaks that)
        model_config = copy.deepcopy(model_config)
        model_config.bos_token_id = -1  # no token id: nothing is taken for a leading BOS
    detector = WatermarkDetector(model_config=model_config, device="cpu",
                                 watermarking_config=watermarking_config(config, seed))
    shortest = config.watermark_context_width + 1
    scores = np.zeros(len(sequences), dtype=np.float64)
    for k, ids in enumerate(sequences):
        if len(ids) >= shortest:
            row = torch.as_tensor(np.asarray(ids, dtype=np.int64)).unsqueeze(0)
            scores[k] = float(detector(row, return_dict=True).z_score[0])
    return scores
