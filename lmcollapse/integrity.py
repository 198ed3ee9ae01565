"""Is the run what its manifests say? Damage and lineage, checked before anything is trusted.

A complete stage is

* ``damaged`` when a file its manifest recorded is missing or changed, or the manifest itself was
  edited (every manifest carries the sha256 of its own contents);
* ``stale`` when the stage it was built on is no longer the one it recorded: the human data on
  another base model, generation 0 on other human data or another base, generation k on another
  generation k-1 (rebuilt, deleted, or itself stale). A stale generation's numbers belong to a
  lineage that no longer exists; ``make generation-N`` moves it to ``<run>/stale/`` and rebuilds it.

    for check in verify_run(RunDir(Path("runs/tiny"))):          # files hashed
        print(check.name, check.state, check.problem)
    verify_run(run, quick=True)                                   # files only checked for presence
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmcollapse.atomic import sha256_file
from lmcollapse.errors import LmcollapseError
from lmcollapse.rundir import MANIFEST, RunDir, check_unchanged, read_manifest

COMPLETE, DAMAGED, STALE, PARTIAL, MISSING = "complete", "damaged", "stale", "partial", "missing"


@dataclass(frozen=True)
class StageCheck:
    name: str  # base, human, generation-00, ...
    root: Path
    state: str
    problem: str = ""  # one line: what is wrong, and the command that mends it

    @property
    def usable(self) -> bool:
        return self.state == COMPLETE


def lineage(run: RunDir, index: int | None) -> dict[str, Path]:
    """The manifests a stage was built on, by the key its own manifest records their sha256 under.

    ``index`` None is the human-data stage (its blocks are tokenized by the base tokenizer).
    """
    if index is None:
        return {"base_manifest_sha256": run.base / MANIFEST}
    parent = run.generation(index - 1).manifest if index > 0 else run.human / MANIFEST
    return {"parent_manifest_sha256": parent, "base_manifest_sha256": run.base / MANIFEST}


def lineage_record(run: RunDir, index: int | None) -> dict[str, str]:
    """What a stage's manifest records of its lineage, at the time it completes."""
    return {key: sha256_file(path) for key, path in lineage(run, index).items()}


def _stage_check(name: str, root: Path, manifest_path: Path, key: str, files_root: Path, quick: bool,
                 parents: dict[str, tuple[Path, StageCheck]]) -> StageCheck:
    if not manifest_path.is_file():
        return StageCheck(name, root, PARTIAL if root.exists() else MISSING)
    try:
        manifest = read_manifest(manifest_path)
    except LmcollapseError as err:
        return StageCheck(name, root, DAMAGED, str(err))
    for field, (path, parent) in parents.items():
        if parent.state in (STALE, MISSING, PARTIAL):
            return StageCheck(name, root, STALE, f"built on {parent.name}, which is {parent.state} now")
        if not path.is_file() or sha256_file(path) != manifest.get(field):
            return StageCheck(name, root, STALE, f"built on an earlier {parent.name} (its manifest changed since)")
    try:
        check_unchanged(manifest.get(key, {}), files_root, name, accept_changed=False, stage_root=root, quick=quick)
    except LmcollapseError as err:
        return StageCheck(name, root, DAMAGED, str(err))
    return StageCheck(name, root, COMPLETE)


def verify_run(run: RunDir, quick: bool = False) -> list[StageCheck]:
    """Check base, human and every generation on disk, in order; see the module docstring."""
    base = _stage_check("base", run.base, run.base / MANIFEST, "files", run.base_model, quick, {})
    if base.usable and (run.base / "eval.json").is_file():
        try:
            read_manifest(run.base / "eval.json")
        except LmcollapseError as err:
            base = StageCheck("base", run.base, DAMAGED, str(err))
    human = _stage_check("human", run.human, run.human / MANIFEST, "files", run.human, quick,
                         {"base_manifest_sha256": (run.base / MANIFEST, base)})
    checks = [base, human]
    previous = human
    for generation in run.generations_on_disk():
        if generation.index > 0 and previous.name != run.generation(generation.index - 1).name:
            previous = StageCheck(run.generation(generation.index - 1).name, run.generation(generation.index - 1).root,
                                  MISSING)
        paths = lineage(run, generation.index)
        check = _stage_check(generation.name, generation.root, generation.manifest, "outputs", generation.root, quick,
                             {"parent_manifest_sha256": (paths["parent_manifest_sha256"], previous),
                              "base_manifest_sha256": (paths["base_manifest_sha256"], base)})
        checks.append(check)
        previous = check
    return checks
