"""Cheap checks before a run is created or extended: the run folder, the config it was built
with, the corpus and model folder it will read, and the text the base is pretrained on.

    preflight(config, RunDir(Path("runs/tiny")))   # raises LmcollapseError with the fix
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.config import PipelineConfig, check_trained_positions, load_config, result_affecting_differences
from lmcollapse.config.presets import ARCHITECTURE_PRESETS
from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.engine.modeling import check_model_folder
from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.atomic import check_folder_target, read_json
from lmcollapse.run.commands import build_command
from lmcollapse.run.layout import RunDir
from lmcollapse.run.manifests import read_manifest
from lmcollapse.stages.run_file import check_lost_pipeline, check_pipeline_unedited
from lmcollapse.stages.tracking import check_trackers


def preflight(config: PipelineConfig, run: RunDir, corpus: CorpusPlan | None = None, last: int | None = None) -> None:
    """Cheap checks before anything is created: the run folder, the config it was built with, and
    the inputs the stages still to do will read (the corpus and model folder, until they are in)."""
    corpus = corpus or CorpusPlan(config)
    check_trackers(config)
    check_folder_target(run.root, "RUN=", f"RUN=runs/{config.name}")
    if run.pipeline_file.is_file():
        check_pipeline_unedited(run)
        check_same_config(config, run, last)
    elif run.root.is_dir():
        # the lock, and what a command killed while writing pipeline.yaml left (.pipeline.yaml.tmp)
        strangers = [p.name for p in run.root.iterdir() if p.name != ".lock" and not
                     (p.name.startswith(".") and p.name.endswith(".tmp"))]
        if strangers:
            check_lost_pipeline(config, run, strangers)
    if not run.human_manifest.is_file():
        corpus.check_fine_tuning_text()
        corpus.check_settings_read()
    folder = Path(config.model.name).expanduser()
    if not run.base_manifest.is_file() and not config.model.is_preset and (folder.exists() or folder.is_symlink()):
        check_model_folder(folder, config.model.trust_remote_code)
        check_positions_of(config, read_json(folder / "config.json"))
    if run.base_manifest.is_file() and config.pretrain.enabled:
        if read_manifest(run.base_manifest).get("kind") == "preset":  # an older run's fresh-weights base
            raise LmcollapseError(
                f"run {run.root} has a base trained from scratch (made by an older lmcollapse), but this config "
                f"pretrains it (pretrain.corpus={config.pretrain.corpus}): choose a new RUN=... for this config")
    if config.pretrain.enabled and not run.base_manifest.is_file():
        corpus.check_pretraining_text()
    named = {"evaluate.mauve_featurizer": config.evaluate.mauve_featurizer if config.evaluate.mauve else None,
             "decontaminate.scorer": config.decontaminate.scorer if config.decontaminate.enabled else None}
    for key, name in named.items():
        if name is not None:
            check_named_model(name, key, config.model.trust_remote_code)
    for position, entry in enumerate(config.model.entries):  # a chain's families that are not presets
        if position and entry not in ARCHITECTURE_PRESETS and not run.family(position).base_manifest.is_file():
            check_named_model(entry, "model.chain", config.model.trust_remote_code)
            check_positions_of(config.for_family(entry), model_config_of(entry, config.model.trust_remote_code))


def check_named_model(name: str, key: str, trust_remote_code: bool = False) -> None:
    """A model a setting names (a folder, or a hub id the hub or its cache knows), before anything runs."""
    folder = Path(name).expanduser()
    if folder.exists() or folder.is_symlink():
        check_model_folder(folder, trust_remote_code)
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LmcollapseError(f"{key}: no model folder at {folder}: name a folder saved with save_pretrained, or a hub id")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise LmcollapseError(f"{key}: {name!r} is not a model folder and the hub (or its cache) does not have it "
                              f"({error_reason(err, 120)}): name a local model folder or a reachable hub id") from None


def model_config_of(name: str, trust_remote_code: bool) -> dict:
    """A model's config.json as a dict: read from its folder, or from the hub (or its cache)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return read_json(folder / "config.json")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code).to_dict()


def check_positions_of(config: PipelineConfig, model_config: dict) -> None:
    """A pretrained model's position limit bounds prompt + new tokens and the evaluation windows."""
    positions = model_config.get("max_position_embeddings") or model_config.get("n_positions")
    if positions:
        check_trained_positions(config, int(positions), f"max_position_embeddings of {config.model.name}")


def check_same_config(config: PipelineConfig, run: RunDir, last: int | None = None) -> None:
    """Refuse ``config`` where the run was built from another; the way on builds up to ``last`` (the
    generation asked for; default the pipeline's last) with the run's own."""
    recorded = load_config(run.pipeline_file)
    differences = result_affecting_differences(recorded, config)
    if differences:
        shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise LmcollapseError(
            f"run {run.root} was built from a different config ({shown}{more}): choose a new RUN=... for "
            f"these settings, or go on with the run's own: "
            f"{build_command(run.root, recorded.generations - 1 if last is None else last)}")
