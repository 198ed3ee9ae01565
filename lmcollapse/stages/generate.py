"""The corpus stage: generation k's synthetic corpus, every prompt of its training set continued
by its model (``engine/sampling.py``), shard by shard, so a stopped stage resumes at its next shard.

    shards = ensure_synthetic_corpus(context, index, model, train_set)
    corpus = read_synthetic(run.generation(index))
"""

from __future__ import annotations

from lmcollapse.data.records import concatenate, read_records
from lmcollapse.data.regimes import prompts_for
from lmcollapse.engine.modeling import weights_sha256
from lmcollapse.engine.sampling import write_synthetic_corpus
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.layout import GenerationDir
from lmcollapse.run.manifests import read_manifest
from lmcollapse.stages.context import Context


def ensure_synthetic_corpus(context: Context, index: int, model, train_set) -> list[dict]:
    """The generation's synthetic corpus (its shards' sidecars), written shard by shard."""
    run, config = context.run, context.config
    generation = run.generation(index)
    corpus_size = read_manifest(run.human_manifest)["train"]["blocks"]
    human_prompts = read_records(run.human_train) if config.generate.prompts == "human" else None
    # The writer is named by content (its weights' sha256), never by the folder it sits in: two
    # runs of one config in differently named folders write byte-identical shards.
    return write_synthetic_corpus(
        model, context.tokenizer(), prompts_for(config, index, train_set, corpus_size, human_prompts), config.generate,
        seed=config.seed, generation=index, model_label=f"sha256:{weights_sha256(generation.model)}",
        out_dir=generation.synthetic, accelerator=context.accelerator, progress=context.progress)


def read_synthetic(generation: GenerationDir):
    shards = generation.synthetic_shards()
    if not shards:
        raise LmcollapseError(f"{generation.root} has no synthetic corpus: delete the folder to rebuild the generation")
    return concatenate([read_records(path) for path in shards])
