"""Is the run what its manifests say? Damage and lineage, checked before anything is trusted.

A complete stage is

* ``damaged`` when a file its manifest recorded is missing or changed, or the manifest itself was
  edited (every manifest carries the sha256 of its own contents);
* ``stale`` when the stage it was built on is no longer the one it recorded: the human data on
  another base model, generation 0 on other human data or another base, generation k on another
  generation k-1 (rebuilt with other files, or itself stale). A stale generation's numbers belong
  to a lineage that no longer exists; ``make generation-N`` moves it to ``<run>/stale/`` and
  rebuilds it. A stage records its parents' manifests and, apart, their files (the manifest holds
  timings too): a parent rebuilt with the same files, byte for byte, is the same lineage;
* ``pending`` when a stage it was built on is missing or partial (deleted to be rebuilt, or being
  rebuilt): it is kept until that stage is complete again, then used as it is if the files came out
  the same, else stale. Runs recorded before the files were only compare manifests.

A partial generation is checked against the ``lineage.json`` it wrote when it started, so an
interrupted generation is never finished on a training set of the old lineage. A damaged parent
does not make its children stale: the damage is reported, and restoring it mends both.

    for check in verify_run(RunDir(Path("runs/tiny"))):          # files hashed
        print(check.name, check.state, check.problem)
    verify_run(run, quick=True)                                   # files only checked for presence
"""

from __future__ import annotations

import fnmatch
import shlex
from dataclasses import dataclass
from pathlib import Path

from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import canonical_json, sha256_bytes, sha256_file
from lmcollapse.run.commands import build_command, rebuild_command
from lmcollapse.run.layout import RunDir, family_position
from lmcollapse.run.manifests import check_unchanged, read_manifest, recorded_files

COMPLETE, DAMAGED, STALE, PENDING, PARTIAL, MISSING = "complete", "damaged", "stale", "pending", "partial", "missing"
# Complete on disk, but not (or not yet) on the run's lineage: left out of its rows and counts.
OFF_LINEAGE = (STALE, PENDING)


@dataclass(frozen=True)
class StageCheck:
    name: str  # base, human, generation-00, ...
    root: Path
    state: str
    problem: str = ""  # one line: what is wrong, and the command that mends it
    fix: str = ""  # a damaged stage: the command that rebuilds it (restoring its files mends it too)

    @property
    def usable(self) -> bool:
        return self.state == COMPLETE


def off_lineage(checks) -> set[str]:
    """The names of the stages among ``checks`` (``verify_run``'s) that are stale or pending."""
    return {check.name for check in checks if check.state in OFF_LINEAGE}


def lineage(run: RunDir, index: int | None, family: RunDir | None = None) -> dict[str, Path]:
    """The manifests a stage was built on, by the key its own manifest records their sha256 under.

    ``index`` None is the human-data stage (its blocks are tokenized by the base tokenizer).
    ``family``: the folder of a generation's model family where it is not the run's own
    (model.chain): its base and human blocks are part of the lineage too.
    """
    if index is None:
        return {"base_manifest_sha256": run.base_manifest}
    parent = run.generation(index - 1).manifest if index > 0 else run.human_manifest
    paths = {"parent_manifest_sha256": parent, "base_manifest_sha256": run.base_manifest}
    if family is not None:
        paths |= {"family_base_manifest_sha256": family.base_manifest,
                  "family_human_manifest_sha256": family.human_manifest}
    return paths


def lineage_record(run: RunDir, index: int | None, family: RunDir | None = None) -> dict[str, str]:
    """What a stage's manifest records of its lineage, at the time it completes (and the folder of
    its family, when it has one of its own)."""
    record = {}
    for key, path in lineage(run, index, family).items():
        record[key] = sha256_file(path)
        record[files_key(key)] = files_digest(path)
    return record | ({"family": family.name} if family is not None else {})


def files_key(field: str) -> str:
    """Where a lineage record keeps the digest of a parent's files (``parent_manifest_sha256`` ->
    ``parent_files_sha256``)."""
    return field.replace("_manifest_sha256", "_files_sha256")


# Files that record how a stage went rather than what it made: their timings differ on every
# rebuild; the cards describe the rest. A parent's lineage is its weights, tokenizer, corpus,
# blocks and arrays.
MEASUREMENTS = ("eval/*.json", "*/train_log.json", "synthetic/shard-*.json", "synthetic/batch_probe.json", "lineage.json",
                "README.md", "*/README.md")


def files_digest(manifest: Path) -> str:
    """sha256 of what a stage made, as its manifest records it (names and sha256), measurements
    and cards left out: equal for a stage rebuilt byte-identical, though its manifest differs."""
    made = {name: digest for name, digest in recorded_files(read_manifest(manifest)).items() if not _measurement(name)}
    return sha256_bytes(canonical_json(made).encode())


def _measurement(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MEASUREMENTS)


def _consumed_changed(run: RunDir, consumed: dict[str, str]) -> str | None:
    """The first file a generation read (its ``consumed`` record: an earlier stage's file by its
    path in the run) whose stage records another sha256 now, measurements left out; or None. A
    generation reads older stages directly (accumulated corpora, the human blocks, generation 0's
    model), which its parent's files do not cover."""
    recorded: dict[Path, dict[str, str] | None] = {}
    for key, digest in consumed.items():
        manifest, name = _recorded_at(run, key)
        if _measurement(name):
            continue
        if manifest not in recorded:
            try:
                recorded[manifest] = recorded_files(read_manifest(manifest))
            except LmcollapseError:  # gone or unreadable: not what was read
                recorded[manifest] = None
        if recorded[manifest] is None or recorded[manifest].get(name) != digest:
            return key
    return None


def _recorded_at(run: RunDir, key: str) -> tuple[Path, str]:
    """The manifest that records a consumed file (``human/train.parquet``, ``base/model/...``,
    ``family-01/human/...``, ``generation-03/synthetic/...``) and the file's name in it."""
    parts = key.split("/")
    stages = run
    if family_position(parts[0]) is not None:  # a chain's further family
        stages, parts = run.family(family_position(parts[0])), parts[1:]
    if parts[0] == "human":
        return stages.human_manifest, "/".join(parts[1:])
    if parts[:2] == ["base", "model"]:
        return stages.base_manifest, "/".join(parts[2:])
    return run.generation(int(parts[0].removeprefix("generation-"))).manifest, "/".join(parts[1:])


# What becomes of a pending stage once what it waits for is complete: a generation is settled by
# the build; the human blocks are rebuilt with their base (ensure_base_and_human).
SETTLED = "kept until it is complete again, then used as it is if what it read comes out the same, else moved to stale/"
REBUILT_WITH_BASE = "rebuilt with it by the next make generation-N"


def _lineage_problem(recorded: dict, parents: dict[str, tuple[Path, StageCheck]], run: RunDir | None = None,
                     pending: str = SETTLED) -> tuple[str, str] | None:
    """(STALE or PENDING, why) for a stage that recorded ``recorded`` (its parents' manifest sha256
    and files digest by key; a generation's ``consumed`` files, ``run`` given), or None where its
    lineage holds (``pending``: what becomes of it while a parent is missing or partial).

    A damaged parent does not make its children stale: the damage is reported on the parent, and
    restoring it (or accepting it) leaves the children as they were.
    """
    rebuilt = False  # a parent rebuilt since, with the same files
    for field, (path, parent) in parents.items():
        if parent.state == DAMAGED:
            continue
        if parent.state == STALE:
            return STALE, f"built on {parent.name}, which is stale now"
        if parent.state in (MISSING, PARTIAL, PENDING):
            return PENDING, f"built on {parent.name}, which is {parent.state} now: {pending}"
        if sha256_file(path) == recorded.get(field):
            continue
        if files_key(field) not in recorded:
            return STALE, (f"built on an earlier {parent.name} (its manifest changed since, and this stage's record "
                           "predates digests of files, so only manifests compare)")
        try:
            same_files = recorded[files_key(field)] == files_digest(path)
        except LmcollapseError:  # an unreadable parent manifest is reported as damage on the parent
            same_files = False
        if not same_files:
            return STALE, f"built on an earlier {parent.name} (its files changed since)"
        rebuilt = True
    if rebuilt and run is not None:  # the parent's files are not all a generation read
        changed = _consumed_changed(run, recorded["consumed"]) if "consumed" in recorded else "its record"
        if changed is not None:
            return STALE, f"built on files that changed since ({changed}: not what it read)"
    return None


def _stage_check(name: str, root: Path, manifest_path: Path, files_root: Path, quick: bool,
                 parents: dict[str, tuple[Path, StageCheck]], started: Path | None = None,
                 run: RunDir | None = None, pending: str = SETTLED) -> StageCheck:
    if not manifest_path.is_file():
        if not root.exists():
            return StageCheck(name, root, MISSING)
        # A partial stage is stale too if what it was started on has changed since: resuming it
        # would finish it on a training set or checkpoints of the old lineage.
        if started is not None and started.is_file():
            try:
                problem = _lineage_problem(read_manifest(started), parents, run)
            except LmcollapseError as err:
                return StageCheck(name, root, DAMAGED, str(err), rebuild_command(root))
            if problem:
                return StageCheck(name, root, *problem)
        return StageCheck(name, root, PARTIAL)
    try:
        manifest = read_manifest(manifest_path)
    except LmcollapseError as err:
        return StageCheck(name, root, DAMAGED, str(err), rebuild_command(root))
    problem = _lineage_problem(manifest, parents, run, pending)
    if problem:
        return StageCheck(name, root, *problem)
    try:
        check_unchanged(recorded_files(manifest), files_root, name, accept_changed=False, stage_root=root, quick=quick)
    except LmcollapseError as err:
        return StageCheck(name, root, DAMAGED, str(err), rebuild_command(root))
    return StageCheck(name, root, COMPLETE)


def _stray_shards(generation) -> StageCheck | None:
    """A corpus shard in a complete generation that its manifest does not record (copied in, left by
    hand): the corpus is read by its shards' names, so it would be read as part of it."""
    recorded = recorded_files(read_manifest(generation.manifest))
    stray = [p for p in generation.synthetic_shards() if p.relative_to(generation.root).as_posix() not in recorded]
    if not stray:
        return None
    fix = f"rm {shlex.quote(str(stray[0]))}"
    return StageCheck(generation.name, generation.root, DAMAGED,
                      f"{stray[0]} is not one of the shards {generation.name} recorded (it would be read as part of "
                      f"its corpus): remove it ({fix})", fix)


def _side_record(check: StageCheck, path: Path, fix: str) -> StageCheck:
    """``check``, or its stage damaged (mended by ``fix``) where a record kept beside the stage and
    protected like a manifest (the base's evaluation, the human row's mauve) no longer reads."""
    if not (check.usable and path.is_file()):
        return check
    try:
        read_manifest(path, fix=fix)
    except LmcollapseError as err:
        return StageCheck(check.name, check.root, DAMAGED, str(err), fix)
    return check


def verify_run(run: RunDir, quick: bool = False) -> list[StageCheck]:
    """Check base, human and every generation on disk, in order; see the module docstring."""
    generations = run.generations_on_disk()
    base = _stage_check("base", run.base, run.base_manifest, run.base_model, quick, {})
    last = max([g.index for g in generations], default=0)
    # recomputed on its own: the base model need not be rebuilt for it
    base = _side_record(base, run.base_eval, f"rm {shlex.quote(str(run.base_eval))} && {build_command(run.root, last)}")
    human = _stage_check("human", run.human, run.human_manifest, run.human, quick,
                         {"base_manifest_sha256": (run.base_manifest, base)}, pending=REBUILT_WITH_BASE)
    # a reference value (the human row's mauve): removing it leaves the row without one, nothing stale
    human = _side_record(human, run.human_mauve, f"rm {shlex.quote(str(run.human_mauve))} (the human row's mauve is then "
                                                 "left out; a new run computes it)")
    checks = [base, human]
    families = {}  # a chain's further families (family-01/...): their base and human stages
    for folder in run.families_on_disk():
        family_base = _stage_check(f"{folder.name}-base", folder.base, folder.base_manifest, folder.base_model, quick, {})
        family_human = _stage_check(f"{folder.name}-human", folder.human, folder.human_manifest, folder.human, quick,
                                    {"base_manifest_sha256": (folder.base_manifest, family_base)},
                                    pending=REBUILT_WITH_BASE)
        families[folder.name] = (folder, family_base, family_human)
        checks += [family_base, family_human]
    previous = human
    for generation in generations:
        before = run.generation(generation.index - 1)
        if generation.index > 0 and previous.name != before.name:  # a generation missing in between
            previous = StageCheck(before.name, before.root, MISSING)
        family = _family_of(run, generation, families)
        paths = lineage(run, generation.index, family[0] if family else None)
        parents = {"parent_manifest_sha256": (paths["parent_manifest_sha256"], previous),
                   "base_manifest_sha256": (paths["base_manifest_sha256"], base)}
        if family:
            parents |= {"family_base_manifest_sha256": (paths["family_base_manifest_sha256"], family[1]),
                        "family_human_manifest_sha256": (paths["family_human_manifest_sha256"], family[2])}
        check = _stage_check(generation.name, generation.root, generation.manifest, generation.root, quick,
                             parents, started=generation.lineage, run=run)
        if check.state == COMPLETE:
            check = _stray_shards(generation) or check
        checks.append(check)
        previous = check
    return checks


def _family_of(run: RunDir, generation, families: dict) -> tuple | None:
    """The (folder, base check, human check) of the family a generation recorded (model.chain),
    or None for the run's own; a recorded family folder that is gone counts as missing."""
    for recorded in (generation.manifest, generation.lineage):
        if recorded.is_file():
            try:
                name = read_manifest(recorded).get("family")
            except LmcollapseError:
                return None  # reported as damage by the generation's own check
            position = family_position(name) if isinstance(name, str) else None
            if position is None:
                return None  # no family of its own (or not one this layout names)
            if name not in families:
                folder = run.family(position)
                return (folder, StageCheck(f"{name}-base", folder.base, MISSING),
                        StageCheck(f"{name}-human", folder.human, MISSING))
            return families[name]
    return None
