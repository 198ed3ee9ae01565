"""Typed, validated pipeline configuration.

A pipeline is a YAML file in ``pipelines/`` whose sections map onto the frozen dataclasses below;
the docstring under each field is its documentation (``lmcollapse config`` prints them). Dotted
overrides come from the command line (``SET="train.epochs=1 seed=3"``). Unknown keys, wrong types
and impossible values are one-line :class:`ConfigError` messages that name the key. A config is
never executed, only parsed.

    config = load_config(Path("pipelines/tiny.yaml"), ["train.epochs=1"])
"""

from __future__ import annotations

from lmcollapse.config.describe import describe_config, field_docs
from lmcollapse.config.loading import build_config, load_config, merge_sections, parse_overrides, set_dotted
from lmcollapse.config.pipeline_config import (
    OPERATIONAL_KEYS,
    PipelineConfig,
    check_name,
    check_trained_positions,
    config_to_dict,
    config_to_yaml,
    flatten,
    result_affecting_differences,
    safe_name,
)
from lmcollapse.config.sections import AUTO_PRETRAIN, DEFAULT_PRETRAIN_CORPUS, DataConfig, ModelConfig, PretrainConfig
from lmcollapse.config.stage_sections import (
    DecontaminateConfig,
    EvaluateConfig,
    GenerateConfig,
    LoraConfig,
    TrackConfig,
    TrainConfig,
)

__all__ = ["AUTO_PRETRAIN", "DEFAULT_PRETRAIN_CORPUS", "OPERATIONAL_KEYS", "DataConfig", "DecontaminateConfig",
           "EvaluateConfig", "GenerateConfig", "LoraConfig", "ModelConfig", "TrackConfig", "PipelineConfig", "PretrainConfig", "TrainConfig",
           "build_config", "check_name", "check_trained_positions", "config_to_dict", "config_to_yaml", "describe_config", "field_docs",
           "flatten", "load_config", "merge_sections", "parse_overrides", "result_affecting_differences", "safe_name", "set_dotted"]
