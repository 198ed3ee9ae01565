"""The commands a message tells the user to paste: they work when pasted, from the repository
(``make ...``) or from anywhere else (this interpreter's ``-m lmcollapse``).

    build_command(Path("runs/tiny"), 4)       # make generation-4 PIPELINE=runs/tiny/pipeline.yaml RUN=runs/tiny
    rebuild_command(Path("runs/tiny/generation-02"))
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from lmcollapse.run.layout import RunDir, family_position


def _in_repository() -> bool:
    """Whether the working directory is the repository root, where ``make`` targets work."""
    return Path("Makefile").is_file() and Path("lmcollapse", "__init__.py").is_file()


def _make_safe(path: Path) -> bool:
    """Whether a path survives a make variable: make expands ``$`` in it (``$(id)`` becomes empty),
    and the Makefile puts it inside double quotes, where a shell still runs backticks."""
    return not any(c in str(path) for c in '$`"\\')


def _pasteable(path: Path, make: str | None, *package: str) -> str:
    """``make`` from the repository, where the path survives a make variable (and there is a make
    form); else the package's command (``python -m lmcollapse`` and ``package``, each quoted) with
    this interpreter."""
    if make is not None and _in_repository() and _make_safe(path):
        return make
    return " ".join([shlex.quote(sys.executable), "-m", "lmcollapse", *map(shlex.quote, package)])


def build_command(run_root: Path, last: int, accept_changed: bool = False) -> str:
    """The command that makes generations 0..``last`` of the run at ``run_root`` complete
    (``accept_changed``: using earlier files as they are now).

    It names the run's own resolved config (``pipeline.yaml``), so it works for a run built
    from any pipeline and any ``SET=`` overrides; from outside the repository, or for a folder
    whose name make would change, it calls the package with this interpreter.
    """
    run_root = Path(run_root)
    make = (f"make generation-{last} PIPELINE={shlex.quote(str(run_root / 'pipeline.yaml'))} "
            f"RUN={shlex.quote(str(run_root))}" + (" ACCEPT_CHANGED=1" if accept_changed else ""))
    return _pasteable(run_root, make, "generation", str(last), "--run", str(run_root.resolve()),
                      *(["--accept-changed"] if accept_changed else []))


def pipeline_command(pipeline: Path, run_root: Path, last: int) -> str:
    """The command that builds generations 0..``last`` of the run at ``run_root`` from ``pipeline``."""
    make = f"make generation-{last} PIPELINE={shlex.quote(str(pipeline))} RUN={shlex.quote(str(run_root))}"
    return _pasteable(run_root, make if _make_safe(Path(pipeline)) else None, "generation", str(last),
                      "--pipeline", str(pipeline), "--run", str(run_root))


def start_command(run_root: Path) -> str:
    """The command that starts a new run of the tiny pipeline at ``run_root``."""
    return _pasteable(run_root, f"make generation-0 PIPELINE=pipelines/tiny.yaml RUN={shlex.quote(str(run_root))}",
                      "generation", "0", "--pipeline", "tiny", "--run", str(run_root))


def status_command(run_root: Path) -> str:
    """The command that checks the run at ``run_root``."""
    return _pasteable(run_root, f"make status RUN={shlex.quote(str(run_root))}", "status", "--run", str(run_root))


def study_command(action: str, study_file: Path, *extra: str) -> str:
    """The command that runs ``lmcollapse study <action>`` on a study file (``make study...`` from
    the repository, where it takes no ``extra`` options)."""
    target = {"run": "study", "plan": "study-plan", "status": "study-status", "report": "study-report"}[action]
    make = None if extra else f"make {target} STUDY={shlex.quote(str(study_file))}"  # make's targets take no options
    return _pasteable(study_file, make, "study", action, str(study_file), *extra)


def _run_and_last(stage_root: Path, last: int | None) -> tuple[RunDir, int]:
    """The run a stage folder belongs to, and ``last`` or the highest generation on disk."""
    parent = stage_root.parent
    # a chain family's base/ or human/ (<run>/family-NN/base) belongs to the run above; anything else,
    # even in a run folder that happens to be named family-NN, to the folder it is in
    in_family = family_position(parent.name) and stage_root.name in ("base", "human")
    run = RunDir(parent.parent if in_family else parent)
    if last is None:
        last = max((g.index for g in run.generations_on_disk()), default=0)
    return run, last


def rebuild_command(stage_root: Path, last: int | None = None) -> str:
    """Remove a stage's folder, then rebuild it (and what depends on it) with ``build_command``.

    ``stage_root`` is ``<run>/base``, ``<run>/human``, ``<run>/generation-NN`` or a chain family's
    ``<run>/family-NN/base`` or ``human``; ``last`` defaults to the highest generation on disk.
    """
    stage_root = Path(stage_root)
    run, last = _run_and_last(stage_root, last)
    return f"rm -r {shlex.quote(str(stage_root))} && {build_command(run.root, last)}"


def accept_changed_command(stage_root: Path) -> str:
    """Go on with a stage's changed files as they are now: ``build_command`` accepting them."""
    run, last = _run_and_last(Path(stage_root), None)
    return build_command(run.root, last, accept_changed=True)
