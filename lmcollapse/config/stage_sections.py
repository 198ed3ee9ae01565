"""The sections of what each stage of a generation does: train, generate, evaluate,
decontaminate. One frozen dataclass each, every field documented by the docstring under it,
every impossible value refused with a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lmcollapse.errors import ConfigError

# The highest n-gram order of self-BLEU and distinct-n: the column catalogue defines a column for
# every order up to it (metrics/columns.py).
MAX_NGRAM_ORDER = 8


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


# The largest seed every library a run hands it to takes (scikit-learn's and numpy's legacy
# RandomState stop at 2**32 - 1, and MAUVE adds up to 5 to its seed): one bound for every seed key.
MAX_SEED = 2**31 - 1


def _require_seed(value: int, key: str) -> None:
    _require(isinstance(value, int) and 0 <= value <= MAX_SEED, key, f"must be a whole number from 0 to {MAX_SEED}, got {value!r}")


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021) through ``peft``: only the adapters train, and the saved
    generation model has them merged into its weights, so every later stage loads it like any other."""

    r: int = 8
    """Rank of each adapter."""
    alpha: float = 16.0
    """Scale: the adapter's update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input while training."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt (e.g. [q_proj, v_proj]); null: peft's default for the model family."""

    def __post_init__(self) -> None:
        _require(self.r >= 1, "r", f"must be at least 1, got {self.r}")
        _require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    """Passes over the generation's training set."""
    batch_size: int = 128
    """Blocks per optimizer step, over all processes together."""
    micro_batch_size: int | None = None
    """Blocks per forward pass on one process; gradients are accumulated up to ``batch_size``.
    null: ``batch_size`` divided by the number of processes."""
    learning_rate: float = 2e-5
    """Peak AdamW learning rate."""
    min_learning_rate: float = 1e-6
    """The cosine schedule decays to this value at the last step."""
    warmup_steps: int = 0
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (PyTorch's default, as the reference code uses)."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this value; null: no clipping (the reference)."""
    human_loss_weight: float = 1.0
    """Provenance-aware training: the loss weight of a human record relative to a synthetic one
    (from each record's ``source``); 1.0 treats them alike."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision of training through accelerate (bf16 on recent GPUs and CPUs; fp16 on
    GPUs); the weights stay fp32."""
    fused_optimizer: bool = False
    """PyTorch's fused AdamW: one kernel updates every parameter (faster on GPUs)."""
    compile: bool = False
    """torch.compile the training forward and its loss as one function (inductor), once per
    process: the first generation's first steps compile (6-15 s for tiny-opt on two cores), the
    later generations reuse it. The loss curve equals eager training's within float rounding
    (another summation order). Measured once compiled, with fused_optimizer: 1.39-1.92x eager
    training with the default AdamW on an H200 (the opt-125m shape in bf16: a step there is bound
    by kernel launches, which compiling fuses), 0.97x on two CPU cores (it gave 1.26x there only
    while glibc mapped every large block afresh, which the command line no longer lets it do:
    lmcollapse/engine/allocator.py)."""
    select: Literal["last", "best-validation"] = "last"
    """Which weights a generation keeps: ``last``, those after the last epoch; ``best-validation``,
    those after the epoch with the lowest loss on the human validation blocks (``data.validation_split``;
    the official code's ``ModelCheckpoint(monitor="val_loss")``). The manifest records every epoch's
    validation loss and the winner."""
    lora: LoraConfig | None = None
    """Train low-rank adapters instead of every weight (``train.lora: {r: 8}``; needs ``peft``,
    which ``make install`` installs); null: full fine-tuning."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory, about a
    third more compute; the same gradients."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many optimizer steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep while a generation trains."""

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "checkpoint_every", "keep_checkpoints"):
            _require(getattr(self, key) >= 1, key, f"must be at least 1, got {getattr(self, key)}")
        if self.micro_batch_size is not None:
            _require(self.micro_batch_size >= 1, "micro_batch_size", "must be at least 1 or null")
        _require(self.learning_rate > 0, "learning_rate", f"must be positive, got {self.learning_rate}")
        _require(0 <= self.min_learning_rate <= self.learning_rate, "min_learning_rate",
                 f"must be between 0 and learning_rate ({self.learning_rate})")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be 0 or more")
        _require(self.weight_decay >= 0, "weight_decay", "must be 0 or more")
        if self.max_grad_norm is not None:
            _require(self.max_grad_norm > 0, "max_grad_norm", "must be positive or null")
        _require(self.human_loss_weight > 0, "human_loss_weight", f"must be positive, got {self.human_loss_weight}")

    def steps_per_epoch(self, blocks: int) -> int:
        """Optimizer steps in one pass over ``blocks`` (the last batch may be short)."""
        return -(-blocks // self.batch_size)


@dataclass(frozen=True)
class GenerateConfig:
    num_beams: int = 5
    """Beam width; 1 is greedy (or plain sampling with ``do_sample``)."""
    do_sample: bool = False
    """Sample from the distribution instead of searching for the most likely continuation."""
    temperature: float | None = None
    """Sampling temperature (needs do_sample); null: 1.0."""
    top_k: int | None = None
    """Sample among the k most likely tokens (needs do_sample); null: no top-k filter."""
    top_p: float | None = None
    """Nucleus sampling mass (needs do_sample); null: no nucleus filter."""
    typical_p: float | None = None
    """Locally typical sampling mass (needs do_sample); null: off."""
    repetition_penalty: float = 3.0
    """Divide the logits of tokens already present by this factor (1.0: off; the paper uses 3.0)."""
    no_repeat_ngram_size: int = 0
    """Forbid repeating any n-gram of this size (0: off)."""
    min_new_tokens: int = 64
    """Fewest new tokens per sample (end-of-text is suppressed before)."""
    max_new_tokens: int = 64
    """Most new tokens per sample; the paper uses min = max = 64."""
    prompt_tokens: int | None = None
    """Continue only the last this many tokens of each training block; null: the whole block."""
    batch_size: int = 64
    """Prompts per ``generate`` call (with ``batch_probe``, the smallest tried)."""
    batch_probe: bool = False
    """Choose the batch size by a probe before the first shard: batch_size, twice that, ... up to
    a quarter of the prompts or a shard (at most 4,096), each run for a few decoding steps and
    rated by the whole decoding's speed (its prefill once, plus its median timed step for each
    further token), stopping when a doubling gains less than 5% or, on a GPU, before 80% of its
    memory; the smallest batch within 5% of the fastest is used and recorded
    (``synthetic/batch_probe.json`` and the generation's manifest). Only where the batch does not
    decide the text: ``sampler: inverse-cdf`` or search (beam, greedy). Its cost is about a tenth
    of the stage on 2,048 prompts, less on larger corpora."""
    sampler: Literal["multinomial", "inverse-cdf"] = "multinomial"
    """How a token is drawn when sampling with one beam: ``multinomial``, transformers' own
    ``torch.multinomial`` (one exponential variate per vocabulary entry and step: about half of
    a CPU's sampling time); ``inverse-cdf``, the same distribution (the same filters, in the same
    order) from one uniform variate per sequence and step, by a logits processor before a greedy
    step: about 2x faster on a CPU but slower on a GPU (0.68x on an H200, where the many variates
    cost little); each record draws from a stream of its own (seed, generation, record), so its
    text does not depend on the batch it is generated in; other text than ``multinomial``'s."""
    cache_implementation: Literal["dynamic", "static"] = "dynamic"
    """KV cache of ``generate``: ``static`` preallocates it (no growth by concatenation). On a CUDA
    device transformers' ``generate`` then compiles the forward pass by itself (once per model and
    batch shape). Measured: 1.07x with the inverse-CDF sampler on a CPU, 0.37x on an H200 in
    ``make bench``'s short runs, where the compilation is not repaid."""
    attn_implementation: Literal["sdpa", "eager"] | None = None
    """Attention kernel while generating; null: model.attn_implementation (sdpa). ``eager`` (matmul,
    softmax, matmul) decodes faster on a CPU than PyTorch's scaled-dot-product kernel, whose
    one-query path is slow there: about 1.1x at batches of 512-1,024 with the inverse-CDF sampler
    and a static cache. Another summation order: 99.5% of continuations identical in ``make
    bench``'s case. Training and evaluation keep model.attn_implementation."""
    shard_size: int = 1024
    """Records per Parquet shard: the unit of resumption and of work across processes."""
    prompts: Literal["training-set", "human"] = "training-set"
    """What each generation continues: ``training-set``, the blocks it was trained on (the official
    code); ``human``, the original human training blocks (the other reading of the paper)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision while generating (fp32 weights either way); independent of training's,
    and the same whether the model is fresh from training or reloaded after an interruption."""
    watermark: bool = False
    """Watermark every synthetic corpus (Kirchenbauer et al. 2023, transformers'
    ``WatermarkingConfig``): before each token is drawn, the logits of a pseudo-random "green" share
    of the vocabulary, chosen from the previous tokens and a key, are raised by ``watermark_bias``.
    The key is derived from the run's seed and recorded in the generation config beside the shards.
    A mitigation (the ``watermark`` detector finds the text later) that changes the distribution
    studied: the report shows by how much."""
    watermark_bias: float = 2.0
    """Added to the green tokens' logits (delta in the paper)."""
    watermark_greenlist_ratio: float = 0.25
    """Share of the vocabulary that is green at each step (gamma in the paper)."""
    watermark_seeding_scheme: Literal["lefthash", "selfhash"] = "lefthash"
    """How the green list is seeded from the context (transformers' two schemes)."""
    watermark_context_width: int = 1
    """Previous tokens that seed the green list."""

    def __post_init__(self) -> None:
        _require(self.num_beams >= 1, "num_beams", f"must be at least 1, got {self.num_beams}")
        for key in ("temperature", "top_k", "top_p", "typical_p"):
            if getattr(self, key) is not None:
                _require(self.do_sample, key, "only applies when sampling; set generate.do_sample=true")
        if self.temperature is not None:
            _require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        if self.top_k is not None:
            _require(self.top_k >= 1, "top_k", f"must be at least 1, got {self.top_k}")
        for key in ("top_p", "typical_p"):
            value = getattr(self, key)
            _require(value is None or 0.0 < value <= 1.0, key, f"must be in (0, 1], got {value}")
        if self.sampler == "inverse-cdf":
            _require(self.do_sample and self.num_beams == 1, "sampler",
                     "inverse-cdf draws the token of a sampled, one-beam search: set generate.do_sample=true "
                     "generate.num_beams=1, or generate.sampler=multinomial")
        _require(self.repetition_penalty > 0, "repetition_penalty",
                 f"must be positive (1.0 is off), got {self.repetition_penalty}")
        _require(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", "must be 0 (off) or more")
        _require(self.min_new_tokens >= 0, "min_new_tokens", "must be 0 or more")
        _require(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        _require(self.min_new_tokens <= self.max_new_tokens, "min_new_tokens",
                 f"must not exceed generate.max_new_tokens ({self.max_new_tokens})")
        if self.prompt_tokens is not None:
            _require(self.prompt_tokens >= 1, "prompt_tokens", "must be at least 1 or null")
        _require(self.batch_size >= 1, "batch_size", "must be at least 1")
        if self.batch_probe:
            _require(not self.do_sample or self.sampler == "inverse-cdf", "batch_probe",
                     "with the multinomial sampler the batch decides the text: set generate.sampler=inverse-cdf "
                     "(each record its own random stream) or generate.batch_probe=false")
        _require(self.shard_size >= 1, "shard_size", "must be at least 1")
        if self.watermark:
            _require(self.watermark_bias > 0, "watermark_bias", f"must be positive, got {self.watermark_bias}")
            _require(0.0 < self.watermark_greenlist_ratio < 1.0, "watermark_greenlist_ratio",
                     f"must be between 0 and 1, got {self.watermark_greenlist_ratio}")
            _require(self.watermark_context_width >= 1, "watermark_context_width", "must be at least 1")


@dataclass(frozen=True)
class EvaluateConfig:
    block_size: int | None = None
    """Block length for ``ppl_blocks``; null: data.block_size (the paper's 64)."""
    window: int = 128
    """Context window of ``ppl_sliding``."""
    stride: int = 64
    """Step between sliding windows. Below ``window``, every token but the text's first is scored
    once, with up to window-1 tokens of context. At ``window``, each window is scored on its own
    as the block method scores a block (its first token predicted by nothing, so not scored), the
    last, shorter window included."""
    batch_size: int = 64
    """Sequences per forward pass while evaluating."""
    self_bleu_samples: int | None = 1000
    """Self-BLEU on a fixed seeded subsample of this many synthetic samples; null: all of them."""
    self_bleu_max_n: int = 4
    """Highest n-gram order in self-BLEU (uniform weights 1/n)."""
    self_bleu_smoothing: Literal["method0", "method1", "method2", "method3", "method4", "method5", "method7"] = "method1"
    """NLTK smoothing function for self-BLEU."""
    text_tokenization: Literal["whitespace", "nltk-wordpunct", "nltk-tweet"] = "whitespace"
    """How decoded text is split into words for self-BLEU, distinct-n and rare n-grams."""
    distinct_max_n: int = 4
    """distinct-1 .. distinct-n are reported."""
    tails: bool = True
    """Score every generation's synthetic corpus with the generation-0 model (the paper's tails)."""
    rare_ngram_n: int = 1
    """n-gram order of the rare-n-gram survival metric."""
    rare_ngram_max_count: int = 1
    """An n-gram is rare when it occurs at most this often in the human training corpus."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision of every evaluation forward pass (perplexities, tails, detectors)."""
    mauve: bool = True
    """MAUVE between each generation's synthetic corpus and held-out human blocks (column ``mauve``):
    a distance between distributions, where self-BLEU and distinct-n only count repetitions."""
    mauve_samples: int = 1000
    """Texts drawn (seeded, the same indices every generation) from each side; fewer where a side
    has fewer (the number used is recorded in ``eval/mauve.json``)."""
    mauve_clusters: int | None = None
    """k-means clusters that quantise the features; null: the reference's heuristic, a tenth of the samples."""
    mauve_featurizer: str | None = None
    """The model whose final hidden state embeds every text, fixed for the whole run; null: the
    run's base model (before any fine-tuning). A model folder or hub id embeds the decoded text
    with its own tokenizer (the MAUVE paper uses gpt2-large)."""

    def __post_init__(self) -> None:
        if self.block_size is not None:
            _require(self.block_size >= 2, "block_size", "must be at least 2 or null")
        _require(self.window >= 2, "window", "must be at least 2")
        _require(1 <= self.stride <= self.window, "stride",
                 f"must be between 1 and evaluate.window ({self.window}), got {self.stride}")
        _require(self.batch_size >= 1, "batch_size", "must be at least 1")
        if self.self_bleu_samples is not None:
            _require(self.self_bleu_samples >= 2, "self_bleu_samples",
                     "must be at least 2 (leave-one-out needs references) or null for all")
        for key in ("self_bleu_max_n", "distinct_max_n"):
            _require(1 <= getattr(self, key) <= MAX_NGRAM_ORDER, key, f"must be between 1 and {MAX_NGRAM_ORDER}")
        _require(self.rare_ngram_n >= 1, "rare_ngram_n", "must be at least 1")
        _require(self.rare_ngram_max_count >= 1, "rare_ngram_max_count", "must be at least 1")
        _require(self.mauve_samples >= 2, "mauve_samples", f"must be at least 2, got {self.mauve_samples}")
        if self.mauve_clusters is not None:
            _require(2 <= self.mauve_clusters < self.mauve_samples, "mauve_clusters",
                     f"must be at least 2 and fewer than evaluate.mauve_samples ({self.mauve_samples}), "
                     f"got {self.mauve_clusters}; or null for a tenth of the samples")


DETECTORS = ("classifier", "perplexity", "fast-detectgpt", "watermark")
SCORED_DETECTORS = ("perplexity", "fast-detectgpt")  # the detectors that need a scoring model


@dataclass(frozen=True)
class DecontaminateConfig:
    enabled: bool = False
    """Filter each generation's candidate training records with a human-vs-synthetic detector."""
    detector: Literal["classifier", "perplexity", "fast-detectgpt", "watermark"] = "classifier"
    """The detector that filters. ``classifier``: logistic regression on hashed token uni- and
    bigrams. ``perplexity``: logistic regression on each record's mean NLL under the scorer.
    ``fast-detectgpt``: Bao et al.'s analytic conditional probability curvature under the scorer,
    turned into a probability the same way. ``watermark``: transformers' WatermarkDetector z-score
    of the run's own watermark (generate.watermark), dropped above watermark_threshold."""
    measure: tuple[str, ...] = ()
    """More detectors to measure on the same candidates (precision, recall and AUROC against the
    provenance labels, in metrics.csv), without filtering with them."""
    scorer: str | None = None
    """The scoring model of the perplexity and fast-detectgpt detectors; null: the previous
    generation's model. A model folder or hub id scores the decoded text with its own tokenizer."""
    threshold: float = 0.5
    """Drop a candidate when the detector's probability that it is synthetic exceeds this."""
    watermark_threshold: float = 4.0
    """The watermark detector drops a record whose z-score exceeds this (Kirchenbauer et al. use 4)."""
    labelled_fraction: float = 0.2
    """Share of candidates whose provenance label fits the detector (a small annotated sample);
    precision, recall and AUROC are measured on the rest."""

    def __post_init__(self) -> None:
        _require(0.0 < self.threshold < 1.0, "threshold", f"must be between 0 and 1, got {self.threshold}")
        _require(math.isfinite(self.watermark_threshold) and self.watermark_threshold > 0, "watermark_threshold",
                 f"must be a positive z-score (Kirchenbauer et al. use 4), got {self.watermark_threshold}")
        _require(0.0 < self.labelled_fraction < 1.0, "labelled_fraction",
                 f"must be between 0 and 1, got {self.labelled_fraction}")
        for name in self.measure:
            _require(name in DETECTORS, "measure", f"unknown detector {name!r}: use any of {', '.join(DETECTORS)}")

    @property
    def detectors(self) -> tuple[str, ...]:
        """Every detector measured: the filtering one first, then the others, each once."""
        return tuple(dict.fromkeys((self.detector, *self.measure)))


# The trackers accelerate's log_with accepts (accelerate.tracking.LOGGER_TYPE_TO_CLASS), and the
# package each needs; kept here so that config validation does not import accelerate.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio",
                    "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive",
                    "swanlab": "swanlab"}


@dataclass(frozen=True)
class TrackConfig:
    """Experiment tracking through accelerate's trackers; changes no result."""

    ALIASES = {"with": "log_with"}  # track.with, as accelerate's log_with

    log_with: tuple[str, ...] = ()
    """Trackers to log to (``track.with`` works too): any of accelerate's ``log_with`` names
    (tensorboard, wandb, mlflow, trackio, comet_ml, aim, clearml, dvclive, swanlab), each needing its
    package (``make install`` installs tensorboard). Logged, by the main process only: the resolved
    config; per generation, its training loss and learning rate per step, its tokens/s and every
    metric of its metrics row (step = generation); and, by ``lmcollapse report``, the figures.
    TensorBoard writes to ``<run>/tracking/``. Empty: no tracking."""

    def __post_init__(self) -> None:
        for name in self.log_with:
            _require(name in TRACKER_PACKAGES, "log_with",
                     f"unknown tracker {name!r}: use any of {', '.join(TRACKER_PACKAGES)}")
