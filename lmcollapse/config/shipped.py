"""The pipelines and studies that ship with lmcollapse: found by name wherever it is installed.

In a clone of the repository they are its ``pipelines/`` and ``studies/`` folders; in an installed
wheel the same files are the packages ``lmcollapse.pipelines`` and ``lmcollapse.studies.shipped``
(pyproject maps the folders onto them). So ``lmcollapse run --pipeline tiny`` and ``lmcollapse
study run regimes`` work from any folder, and ``lmcollapse pipelines`` / ``lmcollapse studies``
list them.

    path = resolve_pipeline("tiny")          # the shipped pipelines/tiny.yaml
    path = resolve_pipeline("my/own.yaml")   # a file of the user's, as given
    path = resolve_study("regimes")          # the shipped studies/regimes.yaml
"""

from __future__ import annotations

from pathlib import Path

from lmcollapse.errors import ConfigError

DEFAULT_NAME = "tiny"
PACKAGE = Path(__file__).resolve().parent.parent  # lmcollapse/
# Where each kind ships: in the installed package first, then in the repository beside it; the
# file whose presence marks the folder.
FOLDERS = {"pipelines": ((PACKAGE / "pipelines", PACKAGE.parent / "pipelines"), "tiny.yaml"),
           "studies": ((PACKAGE / "studies" / "shipped", PACKAGE.parent / "studies"), "regimes.yaml")}


def shipped_dir(kind: str = "pipelines") -> Path | None:
    """The folder of shipped pipelines (or studies): the installed package's, or the repository's."""
    folders, marker = FOLDERS[kind]
    return next((folder for folder in folders if (folder / marker).is_file()), None)


def shipped_pipelines_dir() -> Path | None:
    return shipped_dir("pipelines")


def shipped(kind: str = "pipelines") -> dict[str, Path]:
    """Every shipped pipeline (or study) by name (its file name without ``.yaml``), sorted."""
    folder = shipped_dir(kind)
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder else {}


def shipped_pipelines() -> dict[str, Path]:
    return shipped("pipelines")


def resolve_pipeline(given: str | Path, kind: str = "pipelines") -> Path:
    """``given`` as a path when it exists; else a shipped pipeline (or study) named by it (``tiny``,
    ``tiny.yaml`` or ``pipelines/tiny.yaml``); else a one-line error listing the shipped ones."""
    path = Path(given).expanduser()
    name = path.name[:-len(".yaml")] if path.name.endswith(".yaml") else path.name
    found = shipped(kind)
    shipped_name = path.parent in (Path("."), Path(kind)) and name in found
    # a file by that name wins; a folder by that name (runs/tiny, a study's tiny/) does not hide the shipped one
    if path.exists() and not (path.is_dir() and shipped_name):
        return path
    if shipped_name:
        return found[name]
    known = ", ".join(found) or "none found"
    singular = kind.rstrip("s").replace("studie", "study")
    raise ConfigError(f"{singular} {given} not found: pass a YAML file, or the name of a shipped {singular} ({known}); "
                      f"lmcollapse {kind} lists them")


def resolve_study(given: str | Path) -> Path:
    return resolve_pipeline(given, "studies")


def describe_shipped(kind: str = "pipelines") -> str:
    """One line per shipped pipeline (or study): its name and its ``description``."""
    import yaml

    lines = []
    for name, path in shipped(kind).items():
        try:
            description = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")
        except (OSError, yaml.YAMLError):
            description = "(unreadable)"
        lines.append(f"{name:<32} {description}")
    run = "lmcollapse run --pipeline NAME" if kind == "pipelines" else "lmcollapse study run NAME"
    lines.append(f"({len(lines)} {kind} in {shipped_dir(kind)}; run one with: {run})")
    return "\n".join(lines)


def describe_pipelines() -> str:
    return describe_shipped("pipelines")
