"""The whole pipeline: its sections, the checks that span them, and its fingerprint.

    config.fingerprint()                      # sha256 of every result-affecting setting
    result_affecting_differences(old, new)    # [(key, old value, new value), ...]
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from lmcollapse.config.presets import ARCHITECTURE_PRESETS
from lmcollapse.config.sections import (
    AUTO_PRETRAIN,
    DEFAULT_PRETRAIN_CORPUS,
    SHAPE_OVERRIDES,
    DataConfig,
    ModelConfig,
    PretrainConfig,
)
from lmcollapse.config.stage_sections import (
    DecontaminateConfig,
    EvaluateConfig,
    GenerateConfig,
    TrackConfig,
    TrainConfig,
    _require,
    _require_seed,
)
from lmcollapse.errors import ConfigError
from lmcollapse.run.atomic import canonical_json, sha256_bytes


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "pipeline"
    """Pipeline name: the default run directory is runs/<name>. A name, not a path: letters,
    digits, ``-``, ``_`` and ``.`` (not ``.`` or ``..``); ``RUN`` chooses any other folder."""
    description: str = ""
    """What the pipeline reproduces (free text, recorded with the run)."""
    seed: int = 0
    """Seed of everything random: initialisation, data order, dropout, sampling, subsamples."""
    generations: int = 5
    """How many generations ``lmcollapse run`` (``make run``) builds: 0 .. generations-1."""
    data: DataConfig = field(default_factory=DataConfig)
    """The human corpus, its blocks, and what each generation trains on."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model every generation starts from."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Pretraining of a preset base, once, cached by content and shared by every run that asks for it."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Fine-tuning of each generation (AdamW, cosine schedule, accelerate)."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """How each generation writes the next generation's corpus (passed to ``generate``)."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """What is measured for every generation."""
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    """Filtering synthetic records out of the training data before each generation trains."""
    track: TrackConfig = field(default_factory=TrackConfig)
    """Experiment trackers (TensorBoard, Weights & Biases, MLflow, ...) that receive what a run logs."""

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        if self.pretrain.corpus == AUTO_PRETRAIN:  # resolved, so a run's pipeline.yaml says what it did
            resolved = DEFAULT_PRETRAIN_CORPUS if self.model.has_preset else None
            object.__setattr__(self, "pretrain", dataclasses.replace(self.pretrain, corpus=resolved))
        _require(self.generations >= 1, "generations", f"must be at least 1, got {self.generations}")
        _require_seed(self.seed, "seed")
        if self.data.regime == "replace":
            _require(self.train.human_loss_weight == 1.0, "train.human_loss_weight",
                     "has no effect with data.regime=replace (no generation mixes human and synthetic records)")
            _require(not self.decontaminate.enabled, "decontaminate.enabled",
                     "has nothing to separate with data.regime=replace: use a regime that mixes human data")
        _require(self.prompt_length <= self.data.block_size, "generate.prompt_tokens",
                 f"must not exceed data.block_size ({self.data.block_size})")
        if self.train.select == "best-validation" and self.data.validation_split in (None, self.data.train_split):
            _require(self.data.max_train_blocks is not None, "train.select",
                     "best-validation needs validation blocks, but with data.max_train_blocks=null every block of "
                     "the train split is a training block: set data.max_train_blocks or data.validation_split")
        if "watermark" in self.decontaminate.detectors:
            _require(self.generate.watermark, "decontaminate.detector",
                     "watermark finds the run's own watermark, but generate.watermark is false: set "
                     "generate.watermark=true or use another detector")
        if self.evaluate.mauve and self.evaluate.mauve_clusters is not None:
            sizes = [n for n in (self.data.max_train_blocks, self.data.max_heldout_blocks) if n is not None]
            samples = min([self.evaluate.mauve_samples, *sizes])
            _require(self.evaluate.mauve_clusters < samples, "evaluate.mauve_clusters",
                     f"is {self.evaluate.mauve_clusters} but MAUVE compares {samples} texts a side "
                     "(evaluate.mauve_samples, data.max_train_blocks, data.max_heldout_blocks): lower it or set it to null")
        if self.model.chain is not None:
            self.check_chain()
            return
        if self.pretrain.enabled:
            _require(self.model.is_preset, "pretrain.corpus",
                     f"pretrains a preset; {self.model.name} is already pretrained: set pretrain.corpus=null")
            _require(self.pretrain.corpus != self.data.corpus or self.pretrain.split not in
                     (self.data.train_split, self.data.heldout_split, self.data.validation_split), "pretrain.split",
                     f"{self.pretrain.split!r} of {self.pretrain.corpus} is also fine-tuning or held-out text: "
                     "pretrain on text disjoint from both (e.g. pretrain.corpus=wikitext-2-v1 pretrain.split=train)")
        if self.model.is_preset:
            positions = self.model.architecture()["max_position_embeddings"]
            _require(self.pretrain.block_size <= positions or not self.pretrain.enabled, "pretrain.block_size",
                     f"is {self.pretrain.block_size} but model.max_positions is {positions}: lower it or raise model.max_positions")
            # Never generate or score at a position the base was never trained on (its embedding
            # would be the random initialisation): the base's training length bounds every sequence.
            trained = self.pretrain.block_size if self.pretrain.enabled else self.data.block_size
            origin = "pretrain.block_size" if self.pretrain.enabled else "data.block_size (a base trained from scratch)"
            check_trained_positions(self, trained, origin)
            longest = self.longest_sequence()
            _require(longest <= positions, "model.max_positions",
                     f"is {positions} but sequences reach {longest} tokens (prompt + new tokens, "
                     "evaluation window); raise model.max_positions or shorten them")

    def check_chain(self) -> None:
        """A chain's checks: every family's own (as one-family configs), and the settings that
        need one vocabulary across generations refused."""
        _require(self.pretrain.enabled is False or self.model.has_preset,
                 "pretrain.corpus", "pretrains the presets of model.chain, and it names none: set pretrain.corpus=null")
        where = "decontaminate.detector" if self.decontaminate.detector == "watermark" else "decontaminate.measure"
        _require("watermark" not in self.decontaminate.detectors, where,
                 "watermark needs one vocabulary, but model.chain writes in several: use the classifier, perplexity "
                 "or fast-detectgpt detector (decontaminate.detector=classifier) and leave watermark out of "
                 "decontaminate.measure")
        # One N for every family: a corpus has the size of the run's human training set, and the
        # regimes draw from each family's, which block counts of other tokenizers would make differ.
        _require(self.data.max_train_blocks is not None, "data.max_train_blocks",
                 "is null, but with model.chain every family's human training set must have one size: set it "
                 "(e.g. data.max_train_blocks=1024)")
        for entry in self.model.entries:
            try:
                self.for_family(entry)  # each family's checks (positions, overrides) on its own config
            except ConfigError as err:
                raise ConfigError(f"model.chain entry {entry}: {err}") from None

    def for_family(self, entry: str) -> PipelineConfig:
        """The one-family config of chain entry ``entry``: what its base, its human blocks and its
        generations are built with (pretraining only where it is a preset). Without a chain, itself."""
        if self.model.chain is None:
            return self
        shape = {} if entry in ARCHITECTURE_PRESETS else {key: None for key in SHAPE_OVERRIDES}  # presets' only
        model = dataclasses.replace(self.model, name=entry, chain=None, **shape)
        pretrain = self.pretrain if model.is_preset else dataclasses.replace(self.pretrain, corpus=None)
        return dataclasses.replace(self, model=model, pretrain=pretrain)

    def family_at(self, generation: int) -> PipelineConfig:
        """The one-family config generation ``generation`` is trained with (``for_family``)."""
        return self.for_family(self.model.entry_at(generation))

    @property
    def eval_block_size(self) -> int:
        return self.evaluate.block_size or self.data.block_size

    @property
    def prompt_length(self) -> int:
        return self.generate.prompt_tokens or self.data.block_size

    def longest_sequence(self) -> int:
        """The longest sequence any stage feeds the model: prompt + new tokens, evaluation windows."""
        return max(self.prompt_length + self.generate.max_new_tokens, self.evaluate.window, self.eval_block_size,
                   self.data.block_size)

    def fingerprint(self, ignoring: tuple[str, ...] = ()) -> str:
        """sha256 of every result-affecting setting: two runs agree on it iff they compute the same.
        ``ignoring`` leaves dotted keys out: ``fingerprint(ignoring=("seed",))`` is the same for
        every seed of one pipeline (how a report groups seeds)."""
        settings = {k: v for k, v in _result_affecting(config_to_dict(self)).items() if k not in ignoring}
        return sha256_bytes(canonical_json(settings).encode())


# A pipeline's name becomes a folder under runs/ (and a study's run names are built from it): it
# may hold nothing that walks out of that folder or that a shell would split.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name: str, key: str, fix: str | None = None) -> None:
    """Refuse a name that is not a plain folder name (``runs/<name>`` must stay under ``runs/``);
    ``fix`` says how to give another (default: the ``key=`` override and RUN=...)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        fix = fix or (f"e.g. {key}={safe_name(str(name))}; to write the run elsewhere, choose its folder with RUN=... "
                      "(--run)")
        raise ConfigError(f"{key}: {name!r} is not a name: use letters, digits, '-', '_' and '.' (not '.' or '..'), {fix}")


def safe_name(text: str) -> str:
    """``text`` made a valid name: every run of other characters becomes one ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned or "pipeline"


def check_trained_positions(config: PipelineConfig, trained: int, origin: str) -> None:
    """Refuse a pipeline whose sequences reach positions its base was not trained on."""
    prompt, new = config.prompt_length, config.generate.max_new_tokens
    if prompt + new > trained:
        fewer = trained - prompt
        # min_new_tokens may not exceed max_new_tokens: lower both when it would.
        options = [f"generate.max_new_tokens={fewer}" if config.generate.min_new_tokens <= fewer else
                   f"generate.min_new_tokens={fewer} generate.max_new_tokens={fewer}"] if prompt < trained else []
        options += [f"generate.prompt_tokens={trained - new}"] if new < trained else []
        if origin.startswith("data.block_size"):
            options.append(f"pretrain.corpus={DEFAULT_PRETRAIN_CORPUS} (a pretrained base)")
        raise ConfigError(
            f"generate.max_new_tokens: prompt ({prompt}) + new tokens ({new}) = {prompt + new} exceeds the {trained} "
            f"positions the base was trained on ({origin}): set {' or '.join(options)}")
    for key, length in (("evaluate.window", config.evaluate.window), ("evaluate.block_size", config.eval_block_size),
                        ("data.block_size", config.data.block_size)):
        if length > trained:
            raise ConfigError(f"{key}: {length} tokens exceeds the {trained} positions the base was trained on "
                              f"({origin}): set {key}={trained} or less")


# Settings that change how a run is carried out, never what it computes: a run directory
# accepts them changing between invocations.
OPERATIONAL_KEYS = frozenset({
    "name", "description", "generations",
    "train.checkpoint_every", "train.keep_checkpoints", "evaluate.batch_size", "pretrain.checkpoint_every",
    "track.log_with",
    # A permission, not a setting of the computation: the same model computes the same either way.
    "model.trust_remote_code",
})


def _result_affecting(flat_or_nested: dict[str, Any]) -> dict[str, Any]:
    flat = flatten(flat_or_nested)
    return {k: v for k, v in flat.items() if k not in OPERATIONAL_KEYS}


def config_to_dict(config: PipelineConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_to_yaml(config: PipelineConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def result_affecting_differences(old: PipelineConfig, new: PipelineConfig) -> list[tuple[str, Any, Any]]:
    """Result-affecting keys whose values differ, as (key, old value, new value)."""
    a = _result_affecting(config_to_dict(old))
    b = _result_affecting(config_to_dict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
