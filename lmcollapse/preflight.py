"""Cheap checks before a run is created or extended: the run folder, the config it was built
with, the corpus and model folder it will read, and the text the base is pretrained on.

    preflight(config, RunDir(Path("runs/tiny")))   # raises LmcollapseError with the fix
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse import corpus
from lmcollapse.atomic import check_folder_target, read_json
from lmcollapse.config import PipelineConfig, check_trained_positions, load_config, result_affecting_differences
from lmcollapse.errors import LmcollapseError
from lmcollapse.manifests import read_manifest
from lmcollapse.modeling import check_model_folder
from lmcollapse.rundir import RunDir, build_command


def preflight(config: PipelineConfig, run: RunDir) -> None:
    """Cheap checks before anything is created: the run folder, the config it was built with, and
    the inputs the stages still to do will read (the corpus and model folder, until they are in)."""
    from lmcollapse.tracking import check_trackers

    check_trackers(config)
    check_folder_target(run.root, "RUN=", f"RUN=runs/{config.name}")
    if run.pipeline_file.is_file():
        check_same_config(config, run)
    elif run.root.is_dir():
        strangers = [p.name for p in run.root.iterdir() if p.name != ".lock"]
        if strangers:
            raise LmcollapseError(
                f"{run.root} is not empty and holds no pipeline.yaml (it has {', '.join(sorted(strangers)[:4])}): "
                "choose a new RUN=... for this pipeline")
    if not run.human_manifest.is_file():
        check_corpus(config)
    if not run.base_manifest.is_file() and not config.model.is_preset and Path(config.model.name).expanduser().exists():
        folder = Path(config.model.name).expanduser()
        check_model_folder(folder, config.model.trust_remote_code)
        check_positions_of(config, read_json(folder / "config.json"))
    if run.base_manifest.is_file() and config.pretrain.enabled:
        if read_manifest(run.base_manifest).get("kind") == "preset":  # an older run's fresh-weights base
            raise LmcollapseError(
                f"run {run.root} has a base trained from scratch (made by an older lmcollapse), but this config "
                f"pretrains it (pretrain.corpus={config.pretrain.corpus}): choose a new RUN=... for this config")
    if config.pretrain.enabled and not run.base_manifest.is_file():
        check_pretraining_text(config)


def check_pretraining_text(config: PipelineConfig) -> None:
    """The pretraining split is readable and shares no text with the fine-tuning, held-out or
    validation text (by release family and split for named corpora, by file content otherwise)."""
    (source,) = corpus.locate_splits(config.pretrain.corpus, config.pretrain.split)
    corpus.check_source(source)
    data = config.data
    roles = [("data.train_split", data.train_split), ("data.heldout_split", data.heldout_split)]
    if separate_validation_split(config):
        roles.append(("data.validation_split", separate_validation_split(config)))
    for key, split in roles:
        (other,) = corpus.locate_data_splits(config, split)
        if corpus.same_text(source, other):
            raise LmcollapseError(
                f"pretrain.split: the {config.pretrain.split} split of {config.pretrain.corpus} holds the same text as "
                f"{key} ({split} of {data.corpus}): pretrain on other articles (WikiText-2's default: "
                "pretrain.split=train with data.train_split=validation and data.heldout_split=test)")


def check_positions_of(config: PipelineConfig, model_config: dict) -> None:
    """A pretrained model's position limit bounds prompt + new tokens and the evaluation windows."""
    positions = model_config.get("max_position_embeddings") or model_config.get("n_positions")
    if positions:
        check_trained_positions(config, int(positions), f"max_position_embeddings of {config.model.name}")


def separate_validation_split(config: PipelineConfig) -> str | None:
    """The split validation blocks come from when it is not the train split (best-validation only)."""
    split = config.data.validation_split
    if config.train.select != "best-validation" or split in (None, config.data.train_split):
        return None
    return split


def check_corpus(config: PipelineConfig) -> None:
    """The train and held-out splits are found, in one place, and readable (not yet loaded)."""
    sources = corpus.locate_data_splits(config, config.data.train_split, config.data.heldout_split)
    corpus.check_same_source(*sources, allow_mixed=config.data.mixed_sources)
    if separate_validation_split(config):
        (validation,) = corpus.locate_data_splits(config, separate_validation_split(config))
        corpus.check_same_source(sources[0], validation, allow_mixed=config.data.mixed_sources)
        sources = (*sources, validation)
    for source in sources:
        corpus.check_source(source)


def check_same_config(config: PipelineConfig, run: RunDir) -> None:
    recorded = load_config(run.pipeline_file)
    differences = result_affecting_differences(recorded, config)
    if differences:
        shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise LmcollapseError(
            f"run {run.root} was built from a different config ({shown}{more}): choose a new RUN=... for "
            f"these settings, or go on with the run's own: {build_command(run.root, config.generations - 1)}")
