"""Dataset and model cards: every corpus a run writes is a dataset ``datasets.load_dataset`` loads
as it is, and every generation's model says what it is.

* ``human/README.md``: the human blocks, splits ``train`` (the training blocks), ``test`` (the
  held-out blocks) and ``validation`` where there is one;
* ``generation-NN/synthetic/README.md``: the generation's synthetic corpus, one ``train`` split of
  its Parquet shards (the JSON sidecars beside them are not data);
* ``generation-NN/model/README.md``: what the model was trained on, from which start, its
  held-out perplexity.

Each dataset card's YAML header holds what the hub reads (licence, tags, size, the ``configs``
that name the data files, the features and split sizes); its text, what a reader needs: the
generating model's sha256 and generation, the decoding settings, the regime, the provenance
columns explained, the generation's metrics. The cards are written before the stage's manifest
(so they are among its recorded outputs: the human manifest lists its card too) and hold nothing
that differs between two runs of one config and seed: no pipeline or folder names (a run is named
by its config's fingerprint), no dates, no timings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from lmcollapse.config import PipelineConfig
from lmcollapse.config.corpora import NAMED_CORPORA
from lmcollapse.data.records import record_features
from lmcollapse.metrics.columns import COLUMNS, HEADLINE, shown_in
from lmcollapse.run.atomic import write_text_atomic

CARD = "README.md"
TAGS = ["synthetic", "model-collapse", "lmcollapse"]
PROVENANCE = {
    "id": "the record's id: human-<split>-<block> for a human block, gNN-<index> for generation NN's record",
    "source": "human or synthetic",
    "generation": "the generation whose model wrote it (null for human text)",
    "parent": "the id of the record it continues (the prompt's block)",
    "model": "sha256 of the weights that wrote it (null for human text)",
    "input_ids": "its tokens (the run's tokenizer)",
    "text": "its text",
}
CARD_METRICS = [name for name in shown_in(HEADLINE)] + ["ppl_blocks_no_eos", "distinct_1", "distinct_3", "distinct_4"]


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _label(config: PipelineConfig) -> str:
    """The run named by what it computes (the config's fingerprint), not by its pipeline or folder
    name, which do not change a result: two runs of one config and seed write the same cards."""
    return config.fingerprint()[:12]


def licence_of(config: PipelineConfig) -> str:
    """The human corpus's licence (the synthetic text derives from it); ``other`` where unknown."""
    named = NAMED_CORPORA.get(config.data.corpus)
    return named.licence if named and named.licence else "other"


def size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def split_sizes(folder: Path, files: dict[str, str]) -> dict[str, dict]:
    """Rows and uncompressed bytes of each split, from its Parquet files' metadata."""
    import pyarrow.parquet as pq

    sizes = {}
    for split, pattern in files.items():
        metadata = [pq.ParquetFile(p).metadata for p in sorted(folder.glob(pattern))]
        sizes[split] = {"num_examples": sum(m.num_rows for m in metadata),
                        # uncompressed bytes, from the files' metadata (no data read)
                        "num_bytes": sum(m.row_group(i).total_byte_size for m in metadata for i in range(m.num_row_groups))}
    return sizes


def dataset_header(config: PipelineConfig, files: dict[str, str], sizes: dict[str, dict], pretty_name: str) -> str:
    header = {
        "license": licence_of(config),
        "tags": TAGS,
        "pretty_name": pretty_name,
        "size_categories": [size_category(sum(size["num_examples"] for size in sizes.values()))],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": split, "path": path} for split, path in files.items()]}],
        "dataset_info": {"features": record_features()._to_yaml_list(),
                         "splits": [{"name": split, **size} for split, size in sizes.items()]},
    }
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def provenance_section() -> list[str]:
    return ["## Columns", ""] + [f"- `{name}`: {text}" for name, text in PROVENANCE.items()] + [""]


def corpus_source(config: PipelineConfig) -> str:
    data = config.data
    named = NAMED_CORPORA.get(data.corpus)
    where = f"{data.corpus} (hub: {named.hub_path})" if named else (
        data.corpus if data.corpus.startswith("hub:") else f"a local corpus ({Path(data.corpus).name})")
    return where


def write_human_card(config: PipelineConfig, folder: Path, rows: dict[str, int], family: str | None = None) -> None:
    """``human/README.md``: the human blocks as a dataset (train / test / validation); ``family``:
    with model.chain, the family whose tokenizer cut them (``config`` is the run's)."""
    data = config.data
    trainer = "generation 0" if family is None else f"the {family} generations"
    files = {"train": "train.parquet", "test": "heldout.parquet"}
    if "validation" in rows:
        files["validation"] = "validation.parquet"
    text = [
        f"# Human text of lmcollapse run {_label(config)}", "",
        f"Blocks of {data.block_size} tokens cut from {corpus_source(config)}"
        + ("" if family is None else f" by the {family} tokenizer (model.chain)")
        + f": `train` holds the blocks {trainer} "
        f"trains on (split {data.train_split!r}, {rows['train']} blocks), `test` the held-out blocks every generation's "
        f"perplexity is measured on (split {data.heldout_split!r}), `validation` the blocks that select each "
        "generation's epoch, where there are any. The licence is the corpus's.", "",
        *provenance_section(),
    ]
    write_text_atomic(folder / CARD, dataset_header(config, files, split_sizes(folder, files),
                                                    f"lmcollapse {_label(config)}: human blocks") + "\n" + "\n".join(text))


def write_synthetic_card(config: PipelineConfig, folder: Path, index: int, model_sha256: str, records: int,
                         regime: str, row: dict) -> None:
    """``generation-NN/synthetic/README.md``: the generation's corpus as a dataset."""
    decoding = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    text = [
        f"# Generation {index} of lmcollapse run {_label(config)}: synthetic text", "",
        f"{records} continuations written by generation {index}'s model (weights sha256 `{model_sha256}`), one per "
        f"prompt, {config.generate.max_new_tokens} new tokens at most, the prompt left out. Regime: {regime}. "
        f"The text derives from {corpus_source(config)}; its licence applies.", "",
        "## Decoding", "", "```json", json.dumps(decoding, indent=1, sort_keys=True), "```", "",
        *provenance_section(),
        "## Metrics of this generation", "",
        "| metric | value | definition |", "| --- | ---: | --- |",
        *[f"| `{name}` {COLUMNS[name].arrow} | {_value(row.get(name), COLUMNS[name].decimals)} | "
          f"{COLUMNS[name].definition.replace('|', '/')} |" for name in CARD_METRICS if name in row],
        "",
    ]
    files = {"train": "shard-*.parquet"}
    write_text_atomic(folder / CARD, dataset_header(config, files, split_sizes(folder, files),
                                                    f"lmcollapse {_label(config)}: generation {index}") + "\n" + "\n".join(text))


def write_model_card(config: PipelineConfig, folder: Path, index: int, start: str, train_set: str, regime: str,
                     row: dict, model_name: str | None = None) -> None:
    """``generation-NN/model/README.md``: what the model is, from where, how good on human text
    (``model_name``: with model.chain, the generation's family)."""
    model_name = model_name or config.model.name
    header = {"library_name": "transformers", "tags": TAGS, "pipeline_tag": "text-generation"}
    if HUB_ID.match(model_name):  # a hub id, not a local folder (the card must not depend on the cwd)
        header["base_model"] = model_name
    text = [
        f"# Generation {index} of lmcollapse run {_label(config)}", "",
        f"A `{model_name}` model fine-tuned from {start} on {train_set} (regime: {regime}), "
        f"{config.train.epochs} epoch(s), AdamW lr {config.train.learning_rate:g}"
        + (f", LoRA rank {config.train.lora.r} merged into the weights" if config.train.lora else "") + ".", "",
        f"Held-out human perplexity ({config.data.heldout_split} split of {corpus_source(config)}): "
        f"{_value(row.get('ppl_blocks'), 2)} over {config.eval_block_size}-token blocks, "
        f"{_value(row.get('ppl_sliding'), 2)} with a {config.evaluate.window}-token sliding window.", "",
        "Load it with `AutoModelForCausalLM.from_pretrained(<this folder>)`; `train_log.json` beside it holds its "
        "training curve.", "",
    ]
    write_text_atomic(folder / CARD, "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(text))


def _value(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{decimals}f}" if isinstance(value, float) else str(value)
