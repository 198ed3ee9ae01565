"""The plan of a run (``--dry-run``): what it will build, from what, with which settings, and
what that costs on this machine. Nothing is downloaded or written: the plan reads the config, the
corpus files' sizes and whatever the run directory already holds, and times one matmul for its
cost estimate (cost.py).

    print(describe_plan(config, RunDir(Path("runs/tiny")), last_generation=4))
    estimate = build_estimate(config, run, last_generation=99)     # .seconds, .disk_bytes
"""

from __future__ import annotations

from dataclasses import dataclass

from lmcollapse.config import PipelineConfig, load_config, result_affecting_differences
from lmcollapse.config.corpora import NAMED_CORPORA
from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.data.locate import SplitSource, check_same_source
from lmcollapse.data.regimes import describe_regime
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.integrity import verify_run
from lmcollapse.run.layout import RunDir
from lmcollapse.run.manifests import read_manifest
from lmcollapse.stages.base_cache import locate_entry
from lmcollapse.views import cost
from lmcollapse.views.status import stage_lines

BYTES_PER_TOKEN_ESTIMATE = 4.0  # byte-level BPE on English Wikipedia text, roughly


def preset_parameters(config: PipelineConfig) -> int:
    """Parameter count of a preset, from its shape on the meta device (no memory, no weights)."""
    return cost.shape_of(config).parameters


def describe_plan(config: PipelineConfig, run: RunDir, last_generation: int, device=None) -> str:
    """The plan; ``device`` (a ``cost.Device``) defaults to this machine's, its matmul peak timed."""
    data, train, gen, ev = config.data, config.train, config.generate, config.evaluate
    lines = [f"pipeline {config.name} -> run {run.root}  (config fingerprint {config.fingerprint()[:12]}, seed {config.seed})"]
    if config.description:
        lines.append(f"  {config.description}")
    if run.pipeline_file.is_file():
        differences = result_affecting_differences(load_config(run.pipeline_file), config)
        if differences:
            key, old, new = differences[0]
            lines.append(f"  WARNING: the run was built from a different config ({key}: {old!r} -> {new!r}); building would stop")

    corpus = CorpusPlan(config)
    lines.extend(_model_lines(config, run, corpus))
    sizes = corpus_sizes(corpus, run)
    human_blocks = sizes.human_blocks
    checks = [lambda: check_same_source(*sizes.sources, allow_mixed=data.mixed_sources)]
    if not run.human_manifest.is_file():  # as preflight: a run built earlier goes on as it was built
        checks.append(corpus.check_settings_read)
    for check in checks:
        try:
            check()
        except LmcollapseError as err:
            lines.append(f"  WARNING: building would stop: {err}")
    for (role, split), source, size, blocks in zip((("train", data.train_split), ("held out", data.heldout_split)),
                                                   sizes.sources, sizes.split_bytes, sizes.split_blocks):
        lines.append(f"{role}: {data.corpus} {split} <- {source.describe()} ({size / 1e6:.2f} MB, ~{blocks} blocks)")
    if data.max_train_blocks is not None:
        lines.append(f"  training set capped at {data.max_train_blocks} blocks (fixed subset, seed {data.subset_seed})")
    lines.append(f"regime: {describe_regime(config)}")

    micro = train.micro_batch_size or train.batch_size
    steps = f"{train.epochs * train.steps_per_epoch(human_blocks)}" if human_blocks else "?"
    exact = "" if run.human_manifest.is_file() else "~"
    lines.append(
        f"train: {train.epochs} epochs, batch {train.batch_size} blocks (micro-batch {micro}), AdamW lr "
        f"{train.learning_rate:g} -> {train.min_learning_rate:g} cosine, warm-up {train.warmup_steps}, "
        f"weight decay {train.weight_decay:g}, precision {train.mixed_precision}; {exact}{steps} steps per generation")
    decoding = ("sampling" + "".join(
        f", {k} {v}" for k, v in (("temperature", gen.temperature), ("top_k", gen.top_k), ("top_p", gen.top_p),
                                  ("typical_p", gen.typical_p)) if v is not None)) if gen.do_sample else "search"
    if gen.sampler == "inverse-cdf":
        decoding += " (inverse-CDF sampler)"
    if gen.attn_implementation is not None:
        decoding += f", {gen.attn_implementation} attention"
    lines.append(
        f"generate: {decoding}, {gen.num_beams} beam(s), repetition penalty {gen.repetition_penalty:g}, "
        f"no-repeat n-gram {gen.no_repeat_ngram_size}, {gen.min_new_tokens}-{gen.max_new_tokens} new tokens per "
        f"prompt of {config.prompt_length} tokens, "
        f"{f'batch probed from {gen.batch_size} up' if gen.batch_probe else f'batch {gen.batch_size}'}, "
        f"shards of {gen.shard_size}")
    lines.append(
        f"evaluate: ppl over {config.eval_block_size}-token blocks and a {ev.window}-token window (stride {ev.stride}); "
        f"self-BLEU-{ev.self_bleu_max_n} ({ev.self_bleu_smoothing}) on {ev.self_bleu_samples or 'all'} samples, "
        f"distinct-1..{ev.distinct_max_n}, rare {ev.rare_ngram_n}-gram survival, tails {'on' if ev.tails else 'off'}; "
        f"words: {ev.text_tokenization}")
    lines.extend(_cost_lines(corpus, sizes, last_generation + 1, device))
    lines.append("stages:")
    # each stage's lineage as the build will see it (damaged, stale, pending), files checked for presence only
    checks = {c.name: c for c in verify_run(run, quick=True)} if run.pipeline_file.is_file() else None
    lines.extend(f"  {line}" for line in stage_lines(run, last_generation, config, checks))
    return "\n".join(lines)


def _model_lines(config: PipelineConfig, run: RunDir, corpus: CorpusPlan) -> list[str]:
    """What the base is and where it comes from; where each generation starts; how it selects."""
    data = config.data
    lines = []
    if config.model.is_preset and config.pretrain.enabled:
        shape, settings = config.model.architecture(), config.pretrain
        entry = locate_entry(config, corpus.pretraining)
        state = "cached, reused" if entry.is_complete else (
            "partly pretrained, resumes" if entry.checkpoints.is_dir() else "not cached yet: pretrained first")
        lines.append(
            f"model: preset {config.model.name} pretrained on {settings.corpus} {settings.split} "
            f"({settings.epochs} epoch(s) of {settings.block_size}-token blocks{'' if settings.max_blocks is None else f', at most {settings.max_blocks}'}): "
            f"{shape['num_hidden_layers']} layers x {shape['hidden_size']} wide, "
            f"{preset_parameters(config) / 1e6:.2f}M parameters, a {shape['vocab_size']}-token BPE tokenizer trained on "
            f"the same text")
        lines.append(f"  pretrained base: {entry.root} ({state})")
    elif config.model.is_preset:
        shape = config.model.architecture()
        lines.append(
            f"model: preset {config.model.name} with fresh weights: {shape['num_hidden_layers']} layers x "
            f"{shape['hidden_size']} wide, {shape['num_attention_heads']} heads, ffn {shape['ffn_dim']}, "
            f"{preset_parameters(config) / 1e6:.2f}M parameters with a {shape['vocab_size']}-token BPE tokenizer "
            f"trained on the {data.train_split} split")
    else:
        lines.append(f"model: pretrained {config.model.name} (from_pretrained; copied into {run.base_model})")
    if config.model.chain is not None:
        families = ", ".join(f"{k}: {config.model.entry_at(k)}" for k in range(len(config.model.chain)))
        lines.append(f"  model.chain: generation {families} (and every later one); each family has its own base and "
                     "human blocks, and reads the text of another family re-encoded by its own tokenizer")
        starts = {"base": "its family's base", "previous": "the previous generation's model",
                  "generation-0": "the first generation of its family (its base for that first one)"}
    else:
        starts = {"base": "the base model", "previous": "the previous generation's model",
                  "generation-0": "generation 0's model (the official code's --load-name best.ckpt)"}
    lines.append(f"  every generation after 0 starts from {starts[config.model.init]}; it continues "
                 f"{'its own training blocks' if config.generate.prompts == 'training-set' else 'the human training blocks'}")
    if config.train.select == "best-validation":
        where = config.data.validation_split or f"{data.train_split} blocks outside the training subset"
        cap = "" if data.max_validation_blocks is None else f", at most {data.max_validation_blocks} blocks"
        lines.append(f"  each generation keeps its epoch with the lowest loss on human validation text ({where}{cap})")
    return lines


def split_bytes(source: SplitSource) -> int:
    """The bytes of text a split holds (a carved split: its share of the train split's); 0 where
    only the hub knows (a hub dataset's size is known once downloaded)."""
    if source.is_local:
        size = sum(p.stat().st_size for p in source.files)
    else:
        named = NAMED_CORPORA.get(source.corpus)
        size = named.sizes.get(source.carving.source_split if source.carving else source.split, 0) if named else 0
    carving = source.carving
    if carving is not None:
        size = int(size * (carving.fraction if carving.part is not None else 1 - carving.parts * carving.fraction))
    return size


@dataclass(frozen=True)
class CorpusSizes:
    """The sizes a plan is made from: the train and held-out splits' sources, bytes and blocks
    (estimated from bytes), and the training and held-out blocks a generation uses (recorded once
    the human stage is done, estimated before)."""

    sources: tuple[SplitSource, SplitSource]
    split_bytes: tuple[int, int]
    split_blocks: tuple[int, int]
    human_blocks: int | None
    heldout_blocks: int


def corpus_sizes(corpus: CorpusPlan, run: RunDir) -> CorpusSizes:
    data = corpus.config.data
    sources = (corpus.train, corpus.heldout)
    sizes = tuple(split_bytes(source) for source in sources)
    train_blocks, heldout_blocks = (int(size / BYTES_PER_TOKEN_ESTIMATE / data.block_size) for size in sizes)
    human_blocks = None
    if run.human_manifest.is_file():
        human_blocks = read_manifest(run.human_manifest)["train"]["blocks"]
    elif train_blocks:
        human_blocks = train_blocks if data.max_train_blocks is None else min(train_blocks, data.max_train_blocks)
    heldout = heldout_blocks if data.max_heldout_blocks is None else min(heldout_blocks, data.max_heldout_blocks)
    return CorpusSizes(sources, sizes, (train_blocks, heldout_blocks), human_blocks, heldout)


def _cost_inputs(corpus: CorpusPlan, sizes: CorpusSizes) -> tuple[int, int]:
    """The validation blocks each generation scores, and the pretraining tokens still to train."""
    config, data = corpus.config, corpus.config.data
    validation = 0
    if config.train.select == "best-validation":
        if corpus.validation is not None:
            pool = int(split_bytes(corpus.validation) / BYTES_PER_TOKEN_ESTIMATE / data.block_size)
        else:  # the train split's blocks outside the training subset
            pool = max(sizes.split_blocks[0] - (sizes.human_blocks or 0), 0)
        validation = pool if data.max_validation_blocks is None else min(pool, data.max_validation_blocks)
    pretrain_tokens = 0
    if config.model.is_preset and config.pretrain.enabled and not locate_entry(config, corpus.pretraining).is_complete:
        source = corpus.pretraining
        named = NAMED_CORPORA.get(config.pretrain.corpus)
        size = (sum(p.stat().st_size for p in source.files) if source.is_local
                else named.sizes.get(config.pretrain.split, 0) if named else 0)
        tokens = size / BYTES_PER_TOKEN_ESTIMATE
        if config.pretrain.max_blocks is not None:
            tokens = min(tokens, config.pretrain.max_blocks * config.pretrain.block_size)
        pretrain_tokens = int(tokens * config.pretrain.epochs)
    return validation, pretrain_tokens


def _cost_lines(corpus: CorpusPlan, sizes: CorpusSizes, generations: int, device) -> list[str]:
    config = corpus.config
    validation, pretrain_tokens = _cost_inputs(corpus, sizes)
    return cost.describe_cost(config, device or cost.this_device(), cost.shape_of(config), sizes.human_blocks,
                              sizes.heldout_blocks * config.eval_block_size, validation, pretrain_tokens, generations)


@dataclass(frozen=True)
class BuildEstimate:
    """What building a run's missing generations costs on this machine, by the plan's cost model."""

    generations: int  # not yet complete, up to the last asked for
    seconds_per_generation: float
    pretrain_seconds: float  # once, where the base is not cached yet
    disk_bytes_per_generation: float

    @property
    def seconds(self) -> float:
        return self.generations * self.seconds_per_generation + self.pretrain_seconds

    @property
    def disk_bytes(self) -> float:
        return self.generations * self.disk_bytes_per_generation


def build_estimate(config: PipelineConfig, run: RunDir, last_generation: int, device=None) -> BuildEstimate | None:
    """What building the generations up to ``last_generation`` not yet complete would take on this
    machine (``device``: a ``cost.Device``, default timed here); None where the plan has no estimate."""
    corpus = CorpusPlan(config)
    shape = cost.shape_of(config)
    sizes = corpus_sizes(corpus, run)
    if shape is None or sizes.human_blocks is None:
        return None
    validation, pretrain_tokens = _cost_inputs(corpus, sizes)
    result = cost.estimate(config, shape, device or cost.this_device(), sizes.human_blocks,
                           sizes.heldout_blocks * config.eval_block_size, validation, pretrain_tokens)
    todo = sum(1 for i in range(last_generation + 1) if not run.generation(i).is_complete)
    per_generation = sum(v for k, v in result.seconds.items() if k != "pretrain (once)")
    return BuildEstimate(todo, per_generation, result.seconds.get("pretrain (once)", 0.0), result.disk_bytes)
