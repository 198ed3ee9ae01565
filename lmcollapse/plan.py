"""Read-only views of a run: the plan (``--dry-run``) and the status (``lmcollapse status``).

Neither downloads nor writes anything: the plan reads the config, the corpus files' sizes and
whatever the run directory already holds, and times one matmul for its cost estimate (cost.py);
the status reads markers, checkpoints and shard sidecars.

    print(describe_plan(config, RunDir(Path("runs/tiny")), last_generation=4))
    print(describe_status(RunDir(Path("runs/tiny"))))
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from lmcollapse import corpus
from lmcollapse.config import PipelineConfig, load_config, result_affecting_differences
from lmcollapse.errors import LmcollapseError
from lmcollapse.integrity import DAMAGED, STALE, StageCheck, verify_run
from lmcollapse.manifests import read_manifest
from lmcollapse.rundir import (
    MANIFEST,
    GenerationDir,
    RunDir,
    build_command,
    completed_shard,
    lock_holder,
    shard_ranges,
    steps_per_epoch,
)

BYTES_PER_TOKEN_ESTIMATE = 4.0  # byte-level BPE on English Wikipedia text, roughly


def preset_parameters(config: PipelineConfig) -> int:
    """Parameter count of a preset, from its shape on the meta device (no memory, no weights)."""
    from lmcollapse.cost import shape_of

    return shape_of(config).parameters


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

    if config.model.is_preset and config.pretrain.enabled:
        from lmcollapse.pretrain import locate_entry

        shape, settings = config.model.architecture(), config.pretrain
        entry = locate_entry(config)
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
    starts = {"base": "the base model", "previous": "the previous generation's model",
              "generation-0": "generation 0's model (the official code's --load-name best.ckpt)"}
    lines.append(f"  every generation after 0 starts from {starts[config.model.init]}; it continues "
                 f"{'its own training blocks' if config.generate.prompts == 'training-set' else 'the human training blocks'}")
    if config.train.select == "best-validation":
        where = config.data.validation_split or f"{data.train_split} blocks outside the training subset"
        cap = "" if data.max_validation_blocks is None else f", at most {data.max_validation_blocks} blocks"
        lines.append(f"  each generation keeps its epoch with the lowest loss on human validation text ({where}{cap})")

    sizes = corpus_sizes(config, run)
    human_blocks = sizes.human_blocks
    try:
        corpus.check_same_source(*sizes.sources, allow_mixed=data.mixed_sources)
    except LmcollapseError as err:
        lines.append(f"  WARNING: building would stop: {err}")
    for (role, split), source, size, blocks in zip((("train", data.train_split), ("held out", data.heldout_split)),
                                                   sizes.sources, sizes.split_bytes, sizes.split_blocks):
        lines.append(f"{role}: {data.corpus} {split} <- {source.describe()} ({size / 1e6:.2f} MB, ~{blocks} blocks)")
    if data.max_train_blocks is not None:
        lines.append(f"  training set capped at {data.max_train_blocks} blocks (fixed subset, seed {data.subset_seed})")
    lines.append(f"regime: {describe_regime(config)}")

    micro = train.micro_batch_size or train.batch_size
    steps = f"{train.epochs * steps_per_epoch(human_blocks, train.batch_size)}" if human_blocks else "?"
    exact = "" if (run.human / MANIFEST).is_file() else "~"
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
        f"prompt of {gen.prompt_tokens or data.block_size} tokens, "
        f"{f'batch probed from {gen.batch_size} up' if gen.batch_probe else f'batch {gen.batch_size}'}, "
        f"shards of {gen.shard_size}")
    lines.append(
        f"evaluate: ppl over {config.eval_block_size}-token blocks and a {ev.window}-token window (stride {ev.stride}); "
        f"self-BLEU-{ev.self_bleu_max_n} ({ev.self_bleu_smoothing}) on {ev.self_bleu_samples or 'all'} samples, "
        f"distinct-1..{ev.distinct_max_n}, rare {ev.rare_ngram_n}-gram survival, tails {'on' if ev.tails else 'off'}; "
        f"words: {ev.text_tokenization}")
    lines.extend(_cost_lines(config, run, sizes, last_generation + 1, device))
    lines.append("stages:")
    lines.extend(f"  {line}" for line in stage_lines(run, last_generation, config))
    return "\n".join(lines)


def split_bytes(source: corpus.SplitSource) -> int:
    """The bytes of text a split holds (a carved split: its share of the train split's); 0 where
    only the hub knows (a hub dataset's size is known once downloaded)."""
    if source.is_local:
        size = sum(p.stat().st_size for p in source.files)
    else:
        named = corpus.NAMED_CORPORA.get(source.corpus)
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

    sources: tuple[corpus.SplitSource, corpus.SplitSource]
    split_bytes: tuple[int, int]
    split_blocks: tuple[int, int]
    human_blocks: int | None
    heldout_blocks: int


def corpus_sizes(config: PipelineConfig, run: RunDir) -> CorpusSizes:
    data = config.data
    sources = corpus.locate_data_splits(config, data.train_split, data.heldout_split)
    sizes = tuple(split_bytes(source) for source in sources)
    train_blocks, heldout_blocks = (int(size / BYTES_PER_TOKEN_ESTIMATE / data.block_size) for size in sizes)
    human_blocks = None
    if run.human_manifest.is_file():
        human_blocks = read_manifest(run.human_manifest)["train"]["blocks"]
    elif train_blocks:
        human_blocks = train_blocks if data.max_train_blocks is None else min(train_blocks, data.max_train_blocks)
    heldout = heldout_blocks if data.max_heldout_blocks is None else min(heldout_blocks, data.max_heldout_blocks)
    return CorpusSizes(sources, sizes, (train_blocks, heldout_blocks), human_blocks, heldout)


def _cost_inputs(config: PipelineConfig, sizes: CorpusSizes) -> tuple[int, int]:
    """The validation blocks each generation scores, and the pretraining tokens still to train."""
    from lmcollapse.preflight import separate_validation_split

    data = config.data
    validation = 0
    if config.train.select == "best-validation":
        if separate_validation_split(config):
            (source,) = corpus.locate_data_splits(config, separate_validation_split(config))
            pool = int(split_bytes(source) / BYTES_PER_TOKEN_ESTIMATE / data.block_size)
        else:  # the train split's blocks outside the training subset
            pool = max(sizes.split_blocks[0] - (sizes.human_blocks or 0), 0)
        validation = pool if data.max_validation_blocks is None else min(pool, data.max_validation_blocks)
    pretrain_tokens = 0
    if config.model.is_preset and config.pretrain.enabled:
        from lmcollapse.pretrain import locate_entry

        if not locate_entry(config).is_complete:
            (source,) = corpus.locate_splits(config.pretrain.corpus, config.pretrain.split)
            named = corpus.NAMED_CORPORA.get(config.pretrain.corpus)
            size = (sum(p.stat().st_size for p in source.files) if source.is_local
                    else named.sizes.get(config.pretrain.split, 0) if named else 0)
            tokens = size / BYTES_PER_TOKEN_ESTIMATE
            if config.pretrain.max_blocks is not None:
                tokens = min(tokens, config.pretrain.max_blocks * config.pretrain.block_size)
            pretrain_tokens = int(tokens * config.pretrain.epochs)
    return validation, pretrain_tokens


def _cost_lines(config: PipelineConfig, run: RunDir, sizes: CorpusSizes, generations: int, device) -> list[str]:
    from lmcollapse import cost

    validation, pretrain_tokens = _cost_inputs(config, sizes)
    return cost.describe_cost(config, device or cost.this_device(), cost.shape_of(config), sizes.human_blocks,
                              sizes.heldout_blocks * config.eval_block_size, validation, pretrain_tokens, generations)


def build_estimate(config: PipelineConfig, run: RunDir, last_generation: int) -> tuple[float, float] | None:
    """Seconds and bytes of disk that building the generations up to ``last_generation`` not yet
    complete would take on this machine (the plan's cost model); None where the plan has no estimate."""
    from lmcollapse import cost

    shape = cost.shape_of(config)
    sizes = corpus_sizes(config, run)
    if shape is None or sizes.human_blocks is None:
        return None
    validation, pretrain_tokens = _cost_inputs(config, sizes)
    result = cost.estimate(config, shape, cost.this_device(), sizes.human_blocks,
                           sizes.heldout_blocks * config.eval_block_size, validation, pretrain_tokens)
    todo = sum(1 for i in range(last_generation + 1) if not run.generation(i).is_complete)
    per_generation = sum(v for k, v in result.seconds.items() if k != "pretrain (once)")
    return (todo * per_generation + result.seconds.get("pretrain (once)", 0.0), todo * result.disk_bytes)


def describe_regime(config: PipelineConfig) -> str:
    data = config.data
    if data.regime == "replace":
        text = "replace: each generation trains only on the previous generation's text"
    elif data.regime == "keep-fraction":
        share = (f"{data.human_fraction:.0%}" if data.human_fraction_schedule is None else
                 "/".join(f"{f:.0%}" for f in data.human_fraction_schedule) + " (generations 1, 2, ...)")
        text = (f"keep-fraction: {share} human blocks ({'redrawn every generation' if data.human_resample else 'drawn once'})"
                " + the previous generation's text")
    elif data.regime == "accumulate":
        text = "accumulate: all human blocks + every earlier generation's text (the set grows by N each generation)"
    else:
        text = f"accumulate-subsample: the accumulated pool subsampled to {data.train_size or 'N (the human size)'} blocks"
    if config.model.init == "previous":
        text += "; each generation starts from the previous model"
    elif config.model.init == "generation-0":
        text += "; each generation starts from generation 0's model"
    if config.generate.prompts == "human":
        text += "; each generation continues the human training blocks"
    if config.train.human_loss_weight != 1.0:
        text += f"; human records weigh {config.train.human_loss_weight:g}x in the loss"
    if config.decontaminate.enabled:
        d = config.decontaminate
        text += (f"; decontaminated by a {d.detector} detector (drop P(synthetic) > {d.threshold:g}, "
                 f"fitted on {d.labelled_fraction:.0%} labelled candidates)")
    return text


def stage_lines(run: RunDir, last_generation: int, config: PipelineConfig | None = None,
                checks: dict[str, StageCheck] | None = None) -> list[str]:
    """One line per stage. With ``checks`` (from ``verify_run``) a complete stage that is damaged
    or stale says so, with the problem and the command that mends it."""
    def state(name: str, fallback: str) -> str:
        check = (checks or {}).get(name)
        if check is not None and check.state in (DAMAGED, STALE):
            return f"{check.state}: {check.problem}"
        return fallback

    lines = [
        f"base           {state('base', 'complete' if (run.base / MANIFEST).is_file() else 'to build')}",
        f"human          {state('human', 'complete' if (run.human / MANIFEST).is_file() else 'to build')}",
    ]
    for index in range(last_generation + 1):
        generation = run.generation(index)
        lines.append(f"{generation.name:<14} {state(generation.name, generation_state(generation, config))}")
    return lines


def generation_state(generation: GenerationDir, config: PipelineConfig | None) -> str:
    """complete / partial (what is done) / missing, from what is on disk."""
    if generation.is_complete:
        return "complete"
    if not generation.root.exists():
        return "missing"
    done = []
    if generation.train_set.is_file():
        done.append("training set")
    if generation.model.is_dir():
        done.append("model trained")
    else:
        checkpoint = generation.latest_checkpoint()
        if checkpoint is not None:
            total = ""
            if config is not None and generation.train_set.is_file():
                import pyarrow.parquet as pq

                blocks = pq.ParquetFile(generation.train_set).metadata.num_rows
                total = f" of {config.train.epochs * steps_per_epoch(blocks, config.train.batch_size)}"
            done.append(f"training at step {checkpoint.step}{total}")
    sidecars = generation.synthetic_sidecars()
    if sidecars:
        finished = sum(1 for s in sidecars if completed_shard(generation.synthetic, int(s.stem.split("-")[1])))
        total = ""
        human = RunDir(generation.root.parent).human / MANIFEST
        if config is not None and human.is_file():
            # Every corpus has the human training set's size, whatever the training set's.
            rows = read_manifest(human)["train"]["blocks"]
            total = f" of {len(shard_ranges(rows, config.generate.shard_size))}"
        done.append(f"{finished}{total} shards")
    evaluated = [p.stem for p in sorted(generation.eval.glob("*.json"))] if generation.eval.is_dir() else []
    if evaluated:
        done.append("eval: " + ", ".join(evaluated))
    return "partial (" + (", ".join(done) if done else "started") + ")"


def describe_status(run: RunDir, quick: bool = False) -> tuple[str, bool]:
    """The status text, and whether every complete stage checked out (files hashed unless ``quick``)."""
    if run.root.exists() and not run.root.is_dir():
        raise LmcollapseError(f"RUN={run.root} is a file, not a run folder: name the folder of a run, e.g. RUN=runs/tiny")
    if not run.pipeline_file.is_file():
        below = sorted(run.root.glob("*/pipeline.yaml")) if run.root.is_dir() else []
        if below:  # a folder of seeds or regimes
            raise LmcollapseError(f"{run.root} is a folder of runs, and status checks one run: "
                                  f"make status RUN={shlex.quote(str(below[0].parent))}")
        raise LmcollapseError(f"{run.root} is not a run (no pipeline.yaml): start one with "
                              f"make generation-0 PIPELINE=pipelines/tiny.yaml RUN={shlex.quote(str(run.root))}")
    config = load_config(run.pipeline_file)
    checks = {c.name: c for c in verify_run(run, quick=quick)}
    on_disk = [g.index for g in run.generations_on_disk()]
    last = max(on_disk + [config.generations - 1])
    lines = [f"run {run.root}: pipeline {config.name}, seed {config.seed}, fingerprint {config.fingerprint()[:12]}"]
    holder = lock_holder(run)
    lines.append(f"writer: {holder}" if holder else "writer: none (the run is not being written)")
    lines.extend(stage_lines(run, last, config, checks))
    complete = [g.index for g in run.complete_generations() if checks[g.name].state != STALE]
    first_missing = next((i for i in range(last + 2) if i not in complete), last + 1)
    damaged = [c for c in checks.values() if c.state == DAMAGED]
    if damaged:  # building would stop on it: the mend comes first
        lines.append(f"next: mend {damaged[0].name} first (building stops on it): restore the file named above, or "
                     f"rebuild it: {damaged[0].fix}")
    elif first_missing <= last:
        state = generation_state(run.generation(first_missing), config)
        action = "resume" if state.startswith("partial") else "build"
        lines.append(f"next: {build_command(run.root, last)} would {action} {run.generation(first_missing).name}"
                     + (f" and build up to generation-{last:02d}" if first_missing < last else ""))
    else:
        lines.append(f"next: all {last + 1} generations are complete; {build_command(run.root, last + 1)} builds one more")
    if not run.metrics_csv.is_file() and complete:
        lines.append(f"metrics.csv is missing: {build_command(run.root, max(complete))} rebuilds it")
    healthy = not any(c.state in (DAMAGED, STALE) for c in checks.values())
    if not healthy:
        lines.append("problems found: see the damaged/stale lines above")
    elif not quick:
        lines.append("verified: every file of every complete stage matches its manifest")
    return "\n".join(lines), healthy
