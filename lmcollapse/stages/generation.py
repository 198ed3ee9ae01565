"""One generation, stage by stage: what it consumes is checked, its lineage recorded first, then
its training set, model, corpus and evaluation, each read back when done; its cards and manifest last.

    row = build_generation(context, index)    # the generation's row of metrics.csv
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.data.regimes import consumed_generations, describe_regime, source_counts
from lmcollapse.engine.modeling import weights_sha256
from lmcollapse.engine.precision import stage_precisions
from lmcollapse.engine.shards import BATCH_PROBE_FILE
from lmcollapse.run.atomic import read_json, sha256_file, sha256_tree
from lmcollapse.run.integrity import lineage_record
from lmcollapse.run.layout import MANIFEST
from lmcollapse.run.manifests import (
    FILES,
    PIPELINE_DIGEST,
    check_unchanged,
    environment_record,
    pipeline_digest,
    read_manifest,
    recorded_files,
    write_manifest,
)
from lmcollapse.stages.cards import write_model_card, write_synthetic_card
from lmcollapse.stages.context import Context, gpu_memory_peak
from lmcollapse.stages.evaluate import evaluate_generation, generation_row
from lmcollapse.stages.generate import ensure_synthetic_corpus, read_synthetic
from lmcollapse.stages.train import ensure_trained_model, start_model
from lmcollapse.stages.training_set import ensure_training_set


def build_generation(context: Context, index: int) -> dict:
    """Generation ``index``, stage by stage; a stage already done is read back, not redone."""
    generation = context.run.generation(index)
    consumed = verify_inputs(context, index)
    mark_lineage(context, index, consumed)
    train_set, train_sha = ensure_training_set(context, index)
    memory: dict[str, float] = {}  # on a GPU: each stage's peak, as this invocation ran it
    with gpu_memory_peak(memory, "train_gpu_peak_gb"):
        model, train_log = ensure_trained_model(context, index, train_set, train_sha)
    with gpu_memory_peak(memory, "generate_gpu_peak_gb"):
        shards = ensure_synthetic_corpus(context, index, model, train_set)
    with gpu_memory_peak(memory, "eval_gpu_peak_gb"):
        results = evaluate_generation(context, index, model, read_synthetic(generation))
    timings = {"train_seconds": train_log["seconds"], "generate_seconds": sum(s["seconds"] for s in shards),
               "eval_seconds": sum(result["seconds"] for result in results.values()), **memory}
    row = generation_row(context, index, train_set, train_log, shards, results, timings)
    write_cards(context, index, train_set, shards, row)
    write_generation_manifest(context, index, consumed, train_sha, timings, row)
    return row


def write_cards(context: Context, index: int, train_set, shards: list[dict], row: dict) -> None:
    """The synthetic corpus's dataset card and the model's card, before the manifest records them."""
    run, config = context.run, context.config
    generation = run.generation(index)
    if context.main:
        regime = describe_regime(config)
        write_synthetic_card(config, generation.synthetic, index, weights_sha256(generation.model),
                             sum(s["records"] for s in shards), regime, row)
        start = start_model(run, config, index)
        counts = ", ".join(f"{n} {source}" for source, n in source_counts(train_set).items())
        write_model_card(config, generation.model, index,
                         f"`{start.relative_to(run.root).as_posix()}` (weights sha256 `{weights_sha256(start)}`)",
                         f"{len(train_set)} blocks of {config.data.block_size} tokens ({counts})", regime, row,
                         context.family_of(index).name)
    context.accelerator.wait_for_everyone()


def mark_lineage(context: Context, index: int, consumed: dict[str, str]) -> None:
    """Record what the generation is built on, and every file it reads, before anything else: a
    partial generation whose parent changes later is then known to be stale (integrity.verify_run),
    never finished on the old lineage."""
    generation = context.run.generation(index)
    if context.main and not generation.lineage.is_file():
        write_manifest(generation.lineage, lineage_record(context.run, index, family_folder(context, index))
                       | {"consumed": consumed})
    context.accelerator.wait_for_everyone()


def write_generation_manifest(context: Context, index: int, consumed: dict, train_sha: str, timings: dict,
                              row: dict) -> None:
    """The manifest, last: what the generation consumed and produced (sha256), and its row."""
    run, config = context.run, context.config
    generation = run.generation(index)
    if context.main:
        outputs = {name: digest for name, digest in sha256_tree(generation.root).items()
                   if not name.startswith(("checkpoints/", ".")) and name != MANIFEST}
        write_manifest(generation.manifest, {
            "generation": index, "run": run.name, "config_fingerprint": config.fingerprint(), "seed": config.seed,
            PIPELINE_DIGEST: pipeline_digest(run.pipeline_file),
            **lineage_record(run, index, family_folder(context, index)), "consumed": consumed,
            "mixed_precision": stage_precisions(config),
            "processes": context.accelerator.num_processes, "generate_batch_size": generate_batch_size(context, index),
            "train_set_sha256": train_sha, FILES: outputs, "timings": timings,
            "metrics": row, **environment_record()})
    context.accelerator.wait_for_everyone()


def family_folder(context: Context, index: int):
    """The folder of generation ``index``'s family where it is not the run's own (model.chain), else None."""
    family = context.family_of(index)
    return family.run if family.position else None


def generate_batch_size(context: Context, index: int) -> int:
    """The batch the corpus was generated in: generate.batch_probe's choice where it probed; never
    more than a shard (a batch never spans two)."""
    probe = context.run.generation(index).synthetic / BATCH_PROBE_FILE
    chosen = int(read_json(probe)["batch_size"]) if probe.is_file() else context.config.generate.batch_size
    return min(chosen, context.config.generate.shard_size)


def verify_inputs(context: Context, index: int) -> dict[str, str]:
    """Check every earlier artefact this generation consumes against its recorded sha256."""
    run, config, accept = context.run, context.config, context.accept_changed
    consumed: dict[str, str] = {}

    def check(recorded: dict[str, str], root: Path, what: str, prefix: str, stage_root: Path | None = None) -> None:
        changed = set(check_unchanged(recorded, root, what, accept, stage_root))  # hashes every file once
        for name, digest in recorded.items():
            path = root / name
            if name in changed:  # used as it is now (--accept-changed): record what it is now
                digest = sha256_file(path) if path.is_file() else "missing"
            consumed[f"{prefix}{name}"] = digest

    human = read_manifest(run.human_manifest)
    check(recorded_files(human), run.human, "the human-data stage", "human/")
    family = context.family_of(index)
    folder = "" if family.position == 0 else f"{family.run.name}/"  # a further family of model.chain
    if family.position:
        check(recorded_files(read_manifest(family.run.human_manifest)), family.run.human,
              f"the human-data stage of {family.name}", f"{folder}human/")
    start = start_model(run, config, index)
    if start == family.run.base_model:
        check(recorded_files(read_manifest(family.run.base_manifest)), start, "the base stage", f"{folder}base/model/",
              family.run.base)
    if index > 0:
        # Everything the previous generation recorded: its corpus is this one's training data,
        # its model this one's start (init=previous), its numbers part of the same table.
        previous = run.generation(index - 1)
        check(recorded_files(read_manifest(previous.manifest)), previous.root, previous.name, f"{previous.name}/")
        for earlier in consumed_generations(config, index)[:-1]:  # accumulating regimes read them all
            older = run.generation(earlier)
            recorded = recorded_files(read_manifest(older.manifest))
            check({k: v for k, v in recorded.items() if k.startswith("synthetic/")}, older.root, older.name, f"{older.name}/")
        # Generation 0's model scores the tails; with init=generation-0 a later one starts from its
        # family's first generation (generation 0 without a chain).
        models = {0} if index > 1 and config.evaluate.tails else set()
        first = config.model.first_generation_of(index)
        if start == run.generation(first).model and first != index - 1:
            models.add(first)
        for earlier in sorted(models):
            older = run.generation(earlier)
            recorded = recorded_files(read_manifest(older.manifest))
            check({k: v for k, v in recorded.items() if k.startswith("model/")}, older.root, older.name, f"{older.name}/")
    return consumed
