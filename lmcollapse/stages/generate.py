"""The corpus stage: generation k's synthetic corpus, every prompt of its training set continued
by its model (``engine/sampling.py``), shard by shard, so a stopped stage resumes at its next shard.

    shards = ensure_synthetic_corpus(context, index, model, train_set)
    corpus = read_synthetic(run.generation(index))
"""

from __future__ import annotations

from lmcollapse.data.records import concatenate, read_records
from lmcollapse.data.regimes import prompts_for
from lmcollapse.data.retokenize import retokenized
from lmcollapse.engine.modeling import weights_sha256
from lmcollapse.engine.sampling import write_synthetic_corpus
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.layout import GenerationDir
from lmcollapse.run.manifests import read_manifest
from lmcollapse.stages.context import Context, Family


def ensure_synthetic_corpus(context: Context, index: int, model, train_set) -> list[dict]:
    """The generation's synthetic corpus (its shards' sidecars), written shard by shard."""
    run, config = context.run, context.config
    generation = run.generation(index)
    family = context.family_of(index)
    # N, the size of every corpus: the run's human training set (chain[0]'s blocks with a chain).
    corpus_size = read_manifest(run.human_manifest)["train"]["blocks"]
    human_prompts = read_records(family.run.human_train) if config.generate.prompts == "human" else None
    # The writer is named by content (its weights' sha256), never by the folder it sits in: two
    # runs of one config in differently named folders write byte-identical shards.
    return write_synthetic_corpus(
        model, family.tokenizer(), prompts_for(config, index, train_set, corpus_size, human_prompts), config.generate,
        seed=config.seed, generation=index, model_label=f"sha256:{weights_sha256(generation.model)}",
        out_dir=generation.synthetic, accelerator=context.accelerator, progress=context.progress)


def read_synthetic_as(context: Context, index: int, family: Family):
    """Generation ``index``'s corpus as ``family`` reads it (``as_read_by``)."""
    return as_read_by(context, read_synthetic(context.run.generation(index)), index, family)


def as_read_by(context: Context, records, writer: int, family: Family):
    """Records generation ``writer`` wrote, in ``family``'s tokens: as they are when it wrote them,
    re-encoded from their text when another family did (model.chain), cut to the longest record
    a generation writes."""
    if context.family_of(writer).position == family.position:
        return records
    config = context.config
    return retokenized(records, family.tokenizer(), max(config.data.block_size, config.generate.max_new_tokens))


def read_synthetic(generation: GenerationDir):
    shards = generation.synthetic_shards()
    if not shards:
        raise LmcollapseError(f"{generation.root} has no synthetic corpus: delete the folder to rebuild the generation")
    return concatenate([read_records(path) for path in shards])
