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


def build_command(run_root: Path, last: int) -> str:
    """The command that makes generations 0..``last`` of the run at ``run_root`` complete.

    It names the run's own resolved config (``pipeline.yaml``), so it works for a run built
    from any pipeline and any ``SET=`` overrides; from outside the repository it calls the
    package with this interpreter.
    """
    run_root = Path(run_root)
    if _in_repository():
        return (f"make generation-{last} PIPELINE={shlex.quote(str(run_root / 'pipeline.yaml'))} "
                f"RUN={shlex.quote(str(run_root))}")
    return f"{shlex.quote(sys.executable)} -m lmcollapse generation {last} --run {shlex.quote(str(run_root.resolve()))}"


def rebuild_command(stage_root: Path, last: int | None = None) -> str:
    """Remove a stage's folder, then rebuild it (and what depends on it) with ``build_command``.

    ``stage_root`` is ``<run>/base``, ``<run>/human``, ``<run>/generation-NN`` or a chain family's
    ``<run>/family-NN/base`` or ``human``; ``last`` defaults to the highest generation on disk.
    """
    stage_root = Path(stage_root)
    parent = stage_root.parent
    run = RunDir(parent.parent if family_position(parent.name) else parent)
    if last is None:
        on_disk = [g.index for g in run.generations_on_disk()]
        last = max(on_disk, default=0)
    return f"rm -r {shlex.quote(str(stage_root))} && {build_command(run.root, last)}"
