"""The pipelines that ship with lmcollapse: found by name wherever it is installed.

In a clone of the repository they are its ``pipelines/`` folder; in an installed wheel the same
files are the package ``lmcollapse.pipelines`` (pyproject maps the folder onto it). So
``lmcollapse run --pipeline tiny`` works from any folder, and ``lmcollapse pipelines`` lists them.

    path = resolve_pipeline("tiny")          # the shipped pipelines/tiny.yaml
    path = resolve_pipeline("my/own.yaml")   # a file of the user's, as given
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.errors import ConfigError

DEFAULT_NAME = "tiny"


def shipped_pipelines_dir() -> Path | None:
    """The folder of shipped pipelines: the installed package's ``lmcollapse/pipelines/``, or the
    repository's ``pipelines/`` beside this package."""
    package = Path(__file__).resolve().parent.parent  # lmcollapse/
    for folder in (package / "pipelines", package.parent / "pipelines"):
        if (folder / f"{DEFAULT_NAME}.yaml").is_file():
            return folder
    return None


def shipped_pipelines() -> dict[str, Path]:
    """Every shipped pipeline by name (its file name without ``.yaml``), sorted."""
    folder = shipped_pipelines_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder else {}


def resolve_pipeline(given: str | Path) -> Path:
    """``given`` as a path when it exists; else a shipped pipeline named by it (``tiny``,
    ``tiny.yaml`` or ``pipelines/tiny.yaml``); else a one-line error listing the shipped ones."""
    path = Path(given).expanduser()
    if path.exists():
        return path
    name = path.name[:-len(".yaml")] if path.name.endswith(".yaml") else path.name
    shipped = shipped_pipelines()
    if (path.parent in (Path("."), Path("pipelines"))) and name in shipped:
        return shipped[name]
    known = ", ".join(shipped) or "none found"
    raise ConfigError(f"pipeline {given} not found: pass a YAML file, or the name of a shipped pipeline ({known}); "
                      "lmcollapse pipelines lists them")


def describe_pipelines() -> str:
    """One line per shipped pipeline: its name and its ``description``."""
    import yaml

    lines = []
    for name, path in shipped_pipelines().items():
        try:
            description = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")
        except (OSError, yaml.YAMLError):
            description = "(unreadable)"
        lines.append(f"{name:<32} {description}")
    folder = shipped_pipelines_dir()
    lines.append(f"({len(lines)} pipelines in {folder}; run one with: lmcollapse run --pipeline NAME)")
    return "\n".join(lines)
