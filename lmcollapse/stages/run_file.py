"""A run's own pipeline.yaml, the config its next generation is built from: its text, the check
that it is the file the run's stages recorded (never edited after them), and a way back when it
is lost.

    text = pipeline_yaml_text(config, run)
    check_pipeline_unedited(run)           # one-line error: edited after a stage recorded it

Light: ``status`` reads it, and loads no model library.
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.config import PipelineConfig, config_to_yaml, load_config
from lmcollapse.config.shipped import shipped_pipelines
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.commands import build_command, pipeline_command
from lmcollapse.run.layout import RunDir
from lmcollapse.run.manifests import edited_pipeline, pipeline_text_digest, recorded_pipeline_digests


def pipeline_yaml_text(config: PipelineConfig, run: RunDir) -> str:
    """A run's pipeline.yaml: the resolved config, under a header naming the command that extends
    the run where it is created (a comment: no digest counts it; after a move, status prints the
    command for where the run is, and the file is never rewritten)."""
    return (f"# Resolved config of run {run.name}, exactly as used. Rebuild or extend it with:\n"
            f"#   {build_command(run.root, config.generations - 1)}\n") + config_to_yaml(config)


def check_pipeline_unedited(run: RunDir) -> None:
    edited = edited_pipeline(run)
    if edited is not None:
        raise LmcollapseError(
            f"{run.pipeline_file} was edited after its {edited} stage was built with it: the next generation would "
            "mix two configs; put back the settings it was built with (git, a backup), or start a new RUN=... for the "
            "new ones")


def check_lost_pipeline(config: PipelineConfig, run: RunDir, found: list[str]) -> None:
    """A folder with no pipeline.yaml is refused, unless it is a run that lost the file and this
    command's config is the one its stages recorded (the same sha256): building writes it back."""
    recorded = next(recorded_pipeline_digests(run), None)
    if recorded is None:
        raise LmcollapseError(f"{run.root} is not empty and holds no pipeline.yaml (it has "
                              f"{', '.join(sorted(found)[:4])}): choose a new RUN=... for this pipeline")
    if recorded[1] != pipeline_text_digest(config_to_yaml(config)):
        raise lost_pipeline_error(run, *recorded)


def lost_pipeline_error(run: RunDir, stage: str, digest: str) -> LmcollapseError:
    """What to do about a run whose pipeline.yaml is gone: the command that built it writes it
    back, and a shipped pipeline whose settings are the recorded ones is named."""
    shipped = next((path for path in shipped_pipelines().values() if _digest_of(path) == digest), None)
    if shipped is not None:
        way = pipeline_command(shipped, run.root, load_config(shipped).generations - 1)
    else:
        way = ("run the command that built the run (the same pipeline and --set overrides; a run built by an older "
               "lmcollapse may match none: restore the file from a backup)")
    return LmcollapseError(f"run {run.root} has lost its pipeline.yaml; its {stage} stage recorded the settings it was "
                           f"built with, and only those write it back: {way}; or choose a new RUN=... for other settings")


def _digest_of(pipeline: Path) -> str | None:
    try:
        return pipeline_text_digest(config_to_yaml(load_config(pipeline)))
    except LmcollapseError:
        return None
