"""Numeric precision of each stage, explicit: training, generation and evaluation each name theirs.

Weights are always kept in fp32; ``bf16``/``fp16`` run the forward passes under ``torch.autocast``.
A stage's precision comes from its own config key (``train.mixed_precision``,
``generate.mixed_precision``, ``evaluate.mixed_precision``), never from what a library left on
the model object: accelerate's ``prepare`` wraps ``forward`` in autocast, so a model fresh from
training and the same model reloaded from disk would otherwise compute differently.

    with autocast("bf16", device):
        logits = model(input_ids=ids).logits
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device | str):
    """``torch.autocast`` for ``precision`` on ``device``'s type; a no-op for ``"no"``."""
    if precision == "no":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}: no, bf16 or fp16")
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def stage_precisions(config) -> dict[str, str]:
    """The precision of every stage of a pipeline, as recorded in each manifest."""
    return {"train": config.train.mixed_precision, "generate": config.generate.mixed_precision,
            "evaluate": config.evaluate.mixed_precision}
