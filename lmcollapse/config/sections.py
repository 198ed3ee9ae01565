"""The sections of what a run starts from: the human data, the model and its pretraining.

One frozen dataclass each, every field documented by the docstring under it (``lmcollapse
config`` prints them), every impossible value refused with a :class:`ConfigError` naming the key.
The sections of what each stage does (train, generate, evaluate, decontaminate) are in
``stage_sections.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmcollapse.config.corpora import HUB_PREFIX, NAMED_CORPORA
from lmcollapse.config.presets import ARCHITECTURE_PRESETS, PRESET_FAMILIES
from lmcollapse.config.stage_sections import TrainConfig, _require, _require_seed


def _require_split_name(name: str | None, key: str) -> None:
    """A split is named, not pointed at: its files are found inside the corpus (``../x`` or an
    absolute path would read text from anywhere, past the check that every split is one corpus's)."""
    if name is not None:
        _require(bool(name.strip()) and "/" not in name and "\\" not in name and name not in (".", ".."), key,
                 f"{name!r} is not a split name: name a split of the corpus (train, validation, test, or a file's "
                 "stem in its folder), not a path")


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "wikitext-2-raw-v1"
    """A named corpus (``wikitext-2-raw-v1``, ``wikitext-2-v1``, ``wikitext-103-raw-v1``,
    ``tinystories``); a hub dataset, ``hub:owner/name``; a local folder whose splits are
    ``<split>.txt`` (or ``.raw``, ``.tokens``: one row per line) or ``<split>.jsonl`` (or ``.json``,
    ``.csv``, ``.parquet``: one row per record), or sub-folders ``<split>/`` of such files; or one
    such file, the train split."""
    text_column: str = "text"
    """The column holding the text, in files of records and hub datasets."""
    hub_config: str | None = None
    """The configuration (subset) of a ``hub:`` dataset; null: its default."""
    carve_fraction: float | None = None
    """A held-out or validation split the corpus lacks is carved from ``train_split``: this
    fraction of its rows each (lines of text files, records otherwise), drawn with ``subset_seed``,
    and the train split keeps the rest. null: a missing split is an error."""
    train_split: str = "train"
    """Split of the corpus that generation 0 trains on (``train``, ``validation`` or ``test``)."""
    heldout_split: str = "test"
    """Split held out for perplexity; it must differ from ``train_split``."""
    block_size: int = 64
    """Tokens per training block: the tokenized split is concatenated and cut into blocks."""
    max_train_blocks: int | None = None
    """Keep at most this many human training blocks (a fixed random subset); null keeps all."""
    max_heldout_blocks: int | None = None
    """Evaluate on at most this many held-out blocks (the first ones); null uses all."""
    subset_seed: int = 0
    """Seed that picks the ``max_train_blocks`` subset; fixed across run seeds by design."""
    regime: Literal["replace", "keep-fraction", "accumulate", "accumulate-subsample"] = "replace"
    """What generation k > 0 trains on. ``replace``: the previous generation's text only
    (Shumailov et al.). ``keep-fraction``: ``human_fraction`` human blocks plus the previous text,
    same size. ``accumulate``: all human blocks plus every earlier generation's text (Gerstgrasser
    et al. 2024). ``accumulate-subsample``: that pool, subsampled to ``train_size`` (Kazdan et al.)."""
    human_fraction: float = 0.0
    """Fraction of each generation's training set drawn from the human blocks (keep-fraction)."""
    human_fraction_schedule: tuple[float, ...] | None = None
    """keep-fraction with a per-generation fraction: the values for generations 1, 2, ...; the last
    one holds for every later generation (e.g. [0.5, 0.2, 0.05])."""
    human_resample: bool = True
    """keep-fraction: draw new human blocks every generation (true), or draw them once (false): every
    generation keeps the first blocks of one seeded draw, so when a schedule lowers the share, each
    generation's human blocks are a subset of the previous generation's."""
    train_size: int | None = None
    """accumulate-subsample: blocks per training set; null: the human training set's size."""
    validation_split: str | None = None
    """Human text for ``train.select=best-validation``, disjoint from the training and held-out
    blocks: a split name (``validation``, as the paper), or null: blocks of ``train_split`` left out
    of the training subset (``max_train_blocks``), drawn with ``subset_seed``."""
    max_validation_blocks: int | None = None
    """Validate on at most this many blocks (a fixed seeded subset); null: all of them."""
    mixed_sources: bool = False
    """Allow the train and held-out splits to come from different sources (local files in different
    folders, or one local and one from the hub); off: such a run is refused, since the same corpus
    read from two places can differ in format."""

    def __post_init__(self) -> None:
        _require_seed(self.subset_seed, "subset_seed")
        for key in ("train_split", "heldout_split", "validation_split"):
            _require_split_name(getattr(self, key), key)
        _require(self.block_size >= 2, "block_size", "must be at least 2 (a block predicts block_size - 1 tokens)")
        _require(self.train_split != self.heldout_split, "heldout_split",
                 f"must differ from train_split ({self.train_split!r}); held-out text is never trained on")
        _require(self.validation_split != self.heldout_split, "validation_split",
                 f"must differ from heldout_split ({self.heldout_split!r}); held-out text never selects a model")
        if self.hub_config is not None:
            _require(self.corpus.startswith(HUB_PREFIX), "hub_config",
                     f"only applies to hub datasets (data.corpus={HUB_PREFIX}owner/name); set it to null")
        if self.corpus in NAMED_CORPORA:
            _require(self.text_column == NAMED_CORPORA[self.corpus].text_column, "text_column",
                     f"{self.corpus} is a named corpus with its own text column; set data.text_column="
                     f"{NAMED_CORPORA[self.corpus].text_column} (or leave it out)")
        if self.carve_fraction is not None:
            _require(0.0 < self.carve_fraction < 0.5, "carve_fraction",
                     f"must be between 0 and 0.5 (e.g. 0.05), or null, got {self.carve_fraction}")
        _require(bool(self.text_column.strip()), "text_column", "must name a column")
        for key in ("max_train_blocks", "max_heldout_blocks", "max_validation_blocks"):
            value = getattr(self, key)
            _require(value is None or value >= 1, key, f"must be at least 1 or null, got {value}")
        _require(0.0 <= self.human_fraction <= 1.0, "human_fraction",
                 f"must be between 0 and 1, got {self.human_fraction}")
        if self.regime == "keep-fraction":
            if self.human_fraction_schedule is None:
                _require(self.human_fraction > 0.0, "human_fraction",
                         "must be above 0 with data.regime=keep-fraction (use data.regime=replace for none)")
            else:
                _require(self.human_fraction == 0.0, "human_fraction_schedule",
                         "replaces data.human_fraction: set one of the two")
                _require(len(self.human_fraction_schedule) >= 1 and all(0.0 <= f <= 1.0 for f in self.human_fraction_schedule),
                         "human_fraction_schedule", "must list fractions between 0 and 1")
        else:
            for key in ("human_fraction", "human_fraction_schedule"):
                _require(getattr(self, key) in (0.0, None), key,
                         f"has no effect with data.regime={self.regime}; set data.regime=keep-fraction")
        if self.train_size is not None:
            _require(self.regime == "accumulate-subsample", "train_size",
                     "only applies to data.regime=accumulate-subsample")
            _require(self.train_size >= 1, "train_size", "must be at least 1")

    def human_fraction_at(self, generation: int) -> float:
        """keep-fraction: the human share of generation ``generation``'s training set (k >= 1)."""
        if self.human_fraction_schedule is None:
            return self.human_fraction
        return self.human_fraction_schedule[min(generation, len(self.human_fraction_schedule)) - 1]


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny-opt"
    """An architecture preset (fresh weights and a BPE tokenizer with the family's special tokens,
    pretrained once, see ``pretrain``): ``tiny-opt``, ``opt-125m``, ``tiny-gpt2``, ``gpt2-124m``,
    ``tiny-pythia``, ``pythia-160m``, ``tiny-llama``, ``tiny-qwen2``; or any causal LM
    ``AutoModelForCausalLM`` loads, by hub id or local folder (e.g. ``facebook/opt-125m``,
    ``EleutherAI/pythia-160m``, ``./my-model``; write a local folder named like a preset as ``./tiny-opt``)."""
    init: Literal["base", "previous", "generation-0"] = "base"
    """Where each generation k >= 1 starts: ``base``, the base model; ``previous``, generation k-1's
    trained model; ``generation-0``, generation 0's trained model (the official code's
    ``--load-name <dir>/best.ckpt``: "the best-performing model on the original task ... as the
    base model for the subsequent generations"). Generation 0 always starts from the base."""
    vocab_size: int | None = None
    """Vocabulary of the trained BPE tokenizer (presets only); null takes the preset's."""
    hidden_size: int | None = None
    """Preset override: model width."""
    num_layers: int | None = None
    """Preset override: number of decoder layers."""
    num_heads: int | None = None
    """Preset override: attention heads (must divide hidden_size)."""
    ffn_dim: int | None = None
    """Preset override: feed-forward width."""
    max_positions: int | None = None
    """Preset override: longest sequence the model accepts (prompt + new tokens)."""
    dropout: float | None = None
    """Preset override: dropout probability during training."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel: PyTorch scaled-dot-product attention or the eager reference."""
    chain: tuple[str, ...] | None = None
    """Collapse across model families: generation k is trained in the family ``chain[k]`` (the last
    entry repeats), each entry a preset, hub id or local folder with its own base and tokenizer,
    e.g. ``[tiny-opt, tiny-llama, tiny-gpt2]``; ``name`` is ``chain[0]`` (and may be left out). Text
    crosses a family boundary as text: the reader re-encodes its predecessors' records with its own
    tokenizer (the shape overrides above shape each preset of the chain). ``init`` then means: ``base``, the family's base; ``generation-0``, the first
    generation of the same family, or its base when generation k is the first; ``previous`` is
    refused where the previous generation is another family. Null: one family, ``name``."""
    trust_remote_code: bool = False
    """Run the Python code a model folder or hub repository ships with it (``auto_map`` in its
    config.json), as transformers' ``trust_remote_code``. Off: such a model is refused, and no code
    from a model ever runs. Turn it on only for a model whose code you have read; it is recorded in
    the run's pipeline.yaml and base manifest."""

    @property
    def is_preset(self) -> bool:
        return self.name in ARCHITECTURE_PRESETS

    @property
    def family(self) -> str:
        """The preset's transformers model type (``opt``, ``gpt2``, ``gpt_neox``, ``llama``, ``qwen2``)."""
        return PRESET_FAMILIES[self.name]

    def entry_at(self, generation: int) -> str:
        """The model family (chain entry) generation ``generation`` is trained in."""
        return self.name if self.chain is None else self.chain[min(generation, len(self.chain) - 1)]

    @property
    def has_preset(self) -> bool:
        """Whether the model, or any entry of its chain, is a preset (pretrained here, shaped by
        the shape overrides)."""
        return self.is_preset or any(e in ARCHITECTURE_PRESETS for e in self.entries)

    @property
    def entries(self) -> tuple[str, ...]:
        """The run's distinct families in order of first use (one without a chain)."""
        return (self.name,) if self.chain is None else tuple(dict.fromkeys(self.chain))

    def family_position(self, generation: int) -> int:
        """Generation ``generation``'s family as an index of ``entries`` (0: the run's own base/ and human/)."""
        return self.entries.index(self.entry_at(generation))

    def first_generation_of(self, generation: int) -> int:
        """The first generation trained in the same family as ``generation``."""
        entry = self.entry_at(generation)
        return next(k for k in range(generation + 1) if self.entry_at(k) == entry)

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", "must name a preset, a hub id or a local folder")
        if self.chain is not None:
            _require(len(self.chain) >= 2 and all(isinstance(e, str) and e.strip() for e in self.chain), "chain",
                     f"must list at least two models (presets, hub ids or folders), got {list(self.chain)!r}")
            _require(self.chain[0] == self.name, "chain",
                     f"starts with {self.chain[0]} but model.name is {self.name}: generation 0 is chain[0], so "
                     f"set model.name={self.chain[0]} or leave model.name out")
            boundary = next((k for k in range(1, len(self.chain)) if self.chain[k] != self.chain[k - 1]), None)
            _require(self.init != "previous" or boundary is None, "init",
                     f"previous cannot start generation {boundary} ({self.chain[boundary or 0]}) from generation "
                     f"{(boundary or 1) - 1}'s {self.chain[(boundary or 1) - 1]} weights: set model.init=generation-0 "
                     "(the first generation of each family, else its base) or model.init=base")
        if not self.has_preset:
            for key in SHAPE_OVERRIDES:
                _require(getattr(self, key) is None, key,
                         f"only applies to the presets ({', '.join(ARCHITECTURE_PRESETS)}); "
                         f"the pretrained model {self.name} keeps its own shape")
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_dim", "max_positions"):
            value = getattr(self, key)
            _require(value is None or value >= 1, key, f"must be a positive integer, got {value}")
        if self.vocab_size is not None:
            _require(self.vocab_size >= 260, "vocab_size",
                     "must be at least 260 (256 bytes plus the special tokens)")
        if self.dropout is not None:
            _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.is_preset:
            self.architecture()  # checks that the overrides fit together
            _require(not self.trust_remote_code, "trust_remote_code",
                     f"only applies to a model loaded with from_pretrained; the preset {self.name} runs no code of its own")

    def architecture(self) -> dict[str, int | float]:
        """The preset's OPTConfig arguments with this config's overrides applied."""
        shape = dict(ARCHITECTURE_PRESETS[self.name])
        overrides = {
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "ffn_dim": self.ffn_dim, "max_position_embeddings": self.max_positions,
            "dropout": self.dropout,
        }
        shape.update({k: v for k, v in overrides.items() if v is not None})
        _require(shape["hidden_size"] % shape["num_attention_heads"] == 0, "num_heads",
                 f"must divide hidden_size ({shape['hidden_size']}), got {shape['num_attention_heads']}")
        return shape


# The settings that shape a preset (with a chain, every preset of it; a pretrained model keeps its own).
SHAPE_OVERRIDES = ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_dim", "max_positions", "dropout")

AUTO_PRETRAIN = "auto"


DEFAULT_PRETRAIN_CORPUS = "wikitext-2-v1"


@dataclass(frozen=True)
class PretrainConfig:
    corpus: str | None = "auto"
    """Pretrain a preset once on this corpus before any fine-tuning (as OPT-125m was pretrained
    before the paper fine-tunes it); it must be text disjoint from ``data``'s training and held-out
    splits (``wikitext-2-v1``'s train split holds other articles than the raw validation and test
    splits). The tokenizer is trained on it too. null: the preset starts from fresh weights.
    ``auto``: ``wikitext-2-v1`` for a preset, null for a pretrained model (resolved when loaded)."""
    split: str = "train"
    """Split of ``corpus`` to pretrain on."""
    block_size: int = 128
    """Tokens per pretraining block: the positions the base is trained on, so prompt + new tokens
    and every evaluation window must fit in it."""
    max_blocks: int | None = None
    """Pretrain on at most this many blocks (a fixed seeded subset); null: all of them."""
    epochs: int = 1
    """Passes over the pretraining blocks."""
    batch_size: int = 32
    """Blocks per optimizer step, over all processes together."""
    micro_batch_size: int | None = None
    """Blocks per forward pass on one process (as train.micro_batch_size); set it to get the same
    base from any number of processes. null: batch_size divided by the number of processes."""
    learning_rate: float = 1.0e-3
    """Peak AdamW learning rate (cosine decay after the warm-up)."""
    min_learning_rate: float = 1.0e-4
    """The cosine schedule decays to this value at the last step."""
    warmup_steps: int = 200
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    seed: int = 0
    """Seed of the base's initialisation, data order and dropout; fixed across run seeds by design,
    so every seed fine-tunes the same base (as every seed of the paper fine-tunes one OPT-125m)."""
    checkpoint_every: int = 200
    """Save a resumable pretraining checkpoint every this many steps."""

    def __post_init__(self) -> None:
        if self.corpus is not None:
            _require(bool(self.corpus.strip()), "corpus", "must name a corpus or be null")
        _require_split_name(self.split, "split")
        _require(self.block_size >= 2, "block_size", "must be at least 2")
        if self.max_blocks is not None:
            _require(self.max_blocks >= 1, "max_blocks", "must be at least 1 or null")
        self.as_train_config()  # the optimizer and schedule settings, checked as train's are
        _require_seed(self.seed, "seed")

    @property
    def enabled(self) -> bool:
        return self.corpus is not None

    def as_train_config(self) -> TrainConfig:
        """The optimizer and schedule of pretraining, in the form the training loop takes."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, micro_batch_size=self.micro_batch_size,
                           learning_rate=self.learning_rate,
                           min_learning_rate=self.min_learning_rate, warmup_steps=self.warmup_steps,
                           weight_decay=self.weight_decay, checkpoint_every=self.checkpoint_every)
