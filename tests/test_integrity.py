"""Damage is never reported complete: every command that reads an artefact checks it first.

A reference micro run (generations 0..2) is copied for each test, damaged the way a user or a
disk would damage it, and the real command line is run on it: ``status`` must name the damage
and exit non-zero, ``generation`` must refuse with one line and touch nothing, and a stage whose
parent changed must be rebuilt, not reported complete.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, build_quietly, micro_raw_config, run_cli, tree_hashes, write_pipeline
from lmcollapse.config import build_config
from lmcollapse.run.atomic import sha256_file
from lmcollapse.run.layout import RunDir
from lmcollapse.run.manifests import unreadable_reason

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw(small_corpus):
    return micro_raw_config(small_corpus, ["train.epochs=1"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, raw) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("reference") / "run")
    build_quietly(build_config(raw), run.root, 2)
    return run


@pytest.fixture
def run(reference, tmp_path) -> RunDir:
    copy = RunDir(tmp_path / "copy of the run")
    shutil.copytree(reference.root, copy.root)
    return copy


@pytest.fixture
def pipeline(tmp_path, raw) -> Path:
    return write_pipeline(tmp_path / "micro.yaml", raw)


def generation(pipeline: Path, run: RunDir, last: int = 2, *extra: str):
    return run_cli("-q", "generation", str(last), "--pipeline", str(pipeline), "--run", str(run.root), "--no-progress",
                   *extra, env={"LMCOLLAPSE_FAILPOINT": ""})


def status(run: RunDir, *extra: str):
    return run_cli("status", "--run", str(run.root), *extra)


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_an_intact_run_verifies(run):
    result = status(run)
    assert result.returncode == 0, result.stderr
    assert "verified: every file of every complete stage matches its manifest" in result.stdout


def test_every_manifest_records_what_the_numbers_depend_on(run):
    # On a CPU a run's last digits depend on the CPU model and the thread count (README,
    # "Reproducibility"): both are in every stage's manifest, beside the versions.
    import platform

    import torch

    expected = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    for manifest in (run.base_manifest, run.generation(0).manifest, run.generation(1).manifest):
        environment = json.loads(manifest.read_text())
        assert environment["cpu"] == (expected or platform.processor() or "unknown")
        assert environment["threads"] == torch.get_num_threads()
        assert {"torch", "transformers", "lmcollapse"} <= set(environment["versions"])


def test_a_manifest_of_an_older_run_that_names_its_files_outputs_is_still_read(run):
    """Generation manifests once named their file map ``outputs`` (base and human: ``files``); a run
    made then verifies as any other (the last generation's: rewriting an earlier one would change
    the manifest its successor records, and make that one stale)."""
    from lmcollapse.run.manifests import read_manifest, write_manifest

    record = read_manifest(run.generation(2).manifest)
    record = {("outputs" if key == "files" else key): value for key, value in record.items() if key != "manifest_sha256"}
    write_manifest(run.generation(2).manifest, record)
    assert "outputs" in json.loads(run.generation(2).manifest.read_text())
    assert status(run).returncode == 0
    _flip_a_byte(run.generation(2).synthetic / "shard-00000.parquet")  # and its recorded hashes are still checked
    result = status(run)
    assert result.returncode == 1 and "shard-00000.parquet changed" in result.stdout


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, file, state", [
    ("truncate", "generation-01/synthetic/shard-00001.parquet", "changed and cannot be read"),
    ("flip", "generation-00/model/model.safetensors", "changed"),
    ("delete", "generation-02/eval/perplexity.json", "is missing"),
    ("flip", "human/heldout.parquet", "changed"),
])
def test_damage_is_found_by_status_and_stops_generation(run, pipeline, damage, file, state):
    path = run.root / file
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "flip":
        _flip_a_byte(path)
    else:
        path.unlink()
    before = tree_hashes(run.root)

    result = status(run)
    assert result.returncode == 1
    assert f"{path} {state}" in result.stdout and "problems found" in result.stdout

    result = generation(pipeline, run)  # a complete run: today's defect was exit 0 here
    assert result.returncode == 2
    message = last_line(result)
    assert message.startswith(f"lmcollapse: error: {path} {state}")
    # --accept-changed is offered only where it can work: a file that is there and still reads
    offered = "ACCEPT_CHANGED=1`" in message or "--accept-changed`" in message  # make's form, or the package's
    assert offered == (path.is_file() and unreadable_reason(path) is None)
    if offered:
        assert message.endswith(f"or use it as it is now with `make generation-2 PIPELINE={shlex.quote(str(run.pipeline_file))} "
                                f"RUN={shlex.quote(str(run.root))} ACCEPT_CHANGED=1`")
    assert tree_hashes(run.root) == before


def test_status_quick_checks_presence_not_hashes(run):
    _flip_a_byte(run.generation(1).model / "model.safetensors")
    assert status(run, "--quick").returncode == 0
    (run.generation(1).eval / "tails.json").unlink()
    result = status(run, "--quick")
    assert result.returncode == 1 and "tails.json is missing" in result.stdout


def test_an_edited_manifest_is_refused_and_never_reaches_the_tables(run, pipeline):
    manifest = run.generation(1).manifest
    record = json.loads(manifest.read_text())
    record["seed"] = 7
    record["metrics"]["seed"] = 7
    manifest.write_text(json.dumps(record, indent=2))
    run.metrics_csv.unlink()

    result = status(run)
    assert result.returncode == 1 and "was edited after its stage completed" in result.stdout
    result = generation(pipeline, run)
    assert result.returncode == 2
    assert f"lmcollapse: error: {manifest} was edited after its stage completed" in last_line(result)
    assert not run.metrics_csv.exists()
    result = run_cli("report", "--run", str(run.root))
    assert result.returncode == 2 and "was edited after its stage completed" in last_line(result)


def test_a_deleted_metrics_table_is_rebuilt_by_the_next_command(run, reference, pipeline):
    run.metrics_csv.unlink()
    result = status(run)
    assert "metrics.csv is missing" in result.stdout
    assert generation(pipeline, run).returncode == 0
    assert run.metrics_csv.read_bytes() == reference.metrics_csv.read_bytes()


def test_a_parent_rebuilt_byte_identical_keeps_its_descendants(run, reference, pipeline):
    """Deleting generation 0 (the mend of a damaged file) and rebuilding it sent generations 1..2
    to stale/ and retrained them, though generation 0 came out the same: its manifest holds timings.
    They wait for it instead, and are kept when its files are the same."""
    shutil.rmtree(run.generation(0).root)
    result = status(run)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "generation-00  missing" in lines
    assert any(line.startswith("generation-01  pending: built on generation-00, which is missing now: kept until it "
                               "is complete again, then used as it is if what it read comes out the same, else moved "
                               "to stale/") for line in lines), lines
    assert any(line.startswith("generation-02  pending: built on generation-01, which is pending now") for line in lines)
    kept = {index: tree_hashes(run.generation(index).root) for index in (1, 2)}
    # what a report leaves out, it says (here nothing is left: it stops, "no complete generation")
    report = run_cli("report", "--run", str(run.root))
    warning = next(line for line in report.stderr.splitlines() if "left out of the report" in line)
    assert warning.startswith(f"lmcollapse: {run.root}: generation-01, generation-02 left out of the report (pending: "
                              "built on generation-00, which is missing now")
    assert warning.endswith(f"; make generation-2 PIPELINE={shlex.quote(str(run.pipeline_file))} "
                            f"RUN={shlex.quote(str(run.root))} settles them")

    result = generation(pipeline, run, 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "built on a stage that has changed" not in result.stderr and not (run.root / "stale").exists()
    assert {index: tree_hashes(run.generation(index).root) for index in (1, 2)} == kept  # not rebuilt, not rewritten
    assert status(run).returncode == 0
    with open(run.metrics_csv) as handle:
        assert [int(r["generation"]) for r in csv.DictReader(handle)] == [0, 1, 2]
    for name in ("model/model.safetensors", "synthetic/shard-00000.parquet", "eval/tails.npy"):
        assert sha256_file(run.generation(0).root / name) == sha256_file(reference.generation(0).root / name)


@pytest.mark.parametrize("recorded, why", [
    ("other files", "built on an earlier generation-00 (its files changed since)"),
    ("an older run's record", "built on an earlier generation-00 (its manifest changed since, and this stage's record "
                              "predates digests of files, so only manifests compare)"),
    ("another file read", "built on files that changed since (human/train.parquet: not what it read)"),
])
def test_a_parent_rebuilt_with_other_files_makes_its_descendants_stale_and_they_are_rebuilt(
        run, reference, pipeline, recorded, why):
    """Generation 1 records generation 0's files as other than they come out (as on another machine),
    or records only its manifest (a run built before files were recorded), or read a file of an older
    stage that is not what it is now (the human blocks, which generation 0's files do not cover): it
    and generation 2 are moved to stale/ once generation 0 is rebuilt, and rebuilt on it."""
    from lmcollapse.run.manifests import read_manifest, write_manifest

    manifest = read_manifest(run.generation(1).manifest)
    manifest.pop("manifest_sha256", None)
    if recorded == "other files":
        manifest["parent_files_sha256"] = "0" * 64
    elif recorded == "another file read":
        assert "human/train.parquet" in manifest["consumed"]
        manifest["consumed"]["human/train.parquet"] = "0" * 64
    else:
        manifest = {k: v for k, v in manifest.items() if not k.endswith("_files_sha256")}
    write_manifest(run.generation(1).manifest, manifest)
    shutil.rmtree(run.generation(0).root)

    result = generation(pipeline, run, 0)  # generation 0 alone: 1 and 2 wait, untouched
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (run.root / "stale").exists()
    lines = status(run).stdout.splitlines()
    assert f"generation-01  stale: {why}" in lines, lines
    assert any(line.startswith("generation-02  stale: built on generation-01, which is stale now") for line in lines)

    result = generation(pipeline, run, 2)
    assert result.returncode == 0, result.stderr[-2000:]
    warning = next(line for line in result.stderr.splitlines() if "built on a stage that has changed" in line)
    assert warning.startswith("lmcollapse: generation-01, generation-02 were built on a stage that has changed since")
    assert sorted(p.name for p in (run.root / "stale").iterdir()) == ["generation-01", "generation-02"]
    assert status(run).returncode == 0
    # Rebuilt deterministically: the same results as the reference.
    for index in (0, 1, 2):
        for name in ("model/model.safetensors", "synthetic/shard-00000.parquet", "eval/tails.npy"):
            assert sha256_file(run.generation(index).root / name) == sha256_file(reference.generation(index).root / name)


def test_status_hint_is_a_command_that_works_when_pasted(tmp_path, raw, reference):
    """A run built from another pipeline file with SET= overrides, in a folder whose name has a space:
    the command status prints resumes it (today's hint was refused: another config)."""
    pipeline = write_pipeline(tmp_path / "elsewhere.yaml", raw)
    run = RunDir(tmp_path / "my runs" / "with a space")
    result = run_cli("-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(run.root), "--no-progress",
                     "--set", "train.learning_rate=0.002")
    assert result.returncode == 0, result.stderr[-2000:]
    hint = next(line for line in status(run).stdout.splitlines() if line.startswith("next: "))
    command = hint.removeprefix("next: ").split(" would ")[0]
    assert command.startswith("make generation-1 ")
    assert f"#   {command}\n" in run.pipeline_file.read_text()  # the header of the resolved config says the same
    venv = Path(sys.executable).parent
    # As pasted, plus where this test's interpreter lives (the Makefile's default is .venv/bin).
    result = subprocess.run(f"{command} BIN={shlex.quote(str(venv))} -o {shlex.quote(str(venv / '.installed'))}",
                            shell=True, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert run.generation(1).is_complete


def test_run_that_is_a_file_is_a_one_line_error(tmp_path, pipeline):
    path = tmp_path / "a-file"
    path.write_text("not a run\n")
    for args in (("generation", "0", "--pipeline", str(pipeline), "--run", str(path)),
                 ("status", "--run", str(path)), ("report", "--run", str(path))):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr[-1000:])
        assert len(result.stderr.strip().splitlines()) == 1 and "is a file" in result.stderr, result.stderr
    assert path.read_text() == "not a run\n"


def _mount_read_only_copy(source: Path, where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True).returncode:
        return False
    shutil.copytree(source, where / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    return True


def test_a_read_only_run_can_be_read_but_not_extended(reference, pipeline, tmp_path):
    mount = tmp_path / "ro"
    if not _mount_read_only_copy(reference.root, mount):
        pytest.skip("mounting a read-only tmpfs needs root and CAP_SYS_ADMIN")
    try:
        run = RunDir(mount / "run")
        before = tree_hashes(run.root)
        result = status(run)
        assert result.returncode == 0, result.stderr[-2000:]
        result = generation(pipeline, run, 2)
        assert result.returncode == 0, result.stderr[-2000:]
        result = run_cli("report", "--run", str(run.root))
        assert result.returncode == 2 and "read-only" in last_line(result) and "--out" in last_line(result)
        out = tmp_path / "report"
        assert run_cli("report", "--run", str(run.root), "--out", str(out)).returncode == 0
        assert (out / "index.md").is_file()
        result = generation(pipeline, run, 3)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "is read-only" in result.stderr
        assert tree_hashes(run.root) == before
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_pending_generation_is_checked_for_damage_before_it_is_kept(run, pipeline):
    """Generation 1 waits for generation 0; its own files were never hashed while it waited, so a
    changed file in it was kept, and reported as used "--accept-changed" though nobody asked."""
    path = run.generation(1).root / "eval" / "perplexity.json"
    path.write_text(path.read_text() + " ")
    shutil.rmtree(run.generation(0).root)
    before = tree_hashes(run.generation(1).root)
    result = generation(pipeline, run, 2)
    assert result.returncode == 2, result.stderr[-2000:]
    assert last_line(result).startswith(f"lmcollapse: error: {path} changed (sha256 ")
    assert " since generation-01 completed: restore it, rebuild it with " in last_line(result)
    assert run.generation(0).is_complete and tree_hashes(run.generation(1).root) == before
    assert generation(pipeline, run, 2, "--accept-changed").returncode == 0  # accepted: kept as it is


def test_status_of_a_run_with_pending_generations_names_what_comes_first(run):
    shutil.rmtree(run.base)
    lines = status(run).stdout.splitlines()
    assert "human          pending: built on base, which is missing now: rebuilt with it by the next make generation-N" \
        in lines, lines
    assert any(line.startswith("generation-00  pending: built on human, which is pending now") for line in lines)
    next_line = next(line for line in lines if line.startswith("next: "))
    assert next_line.endswith(" would build base, then keep each pending stage whose inputs come out byte-identical "
                              "(else move it to stale/ and rebuild it)")
    plan = run_cli("generation", "2", "--run", str(run.root), "--dry-run").stdout.splitlines()  # as the build sees it
    assert any(line.startswith("  generation-02  pending: built on generation-01, which is pending now") for line in plan)


def test_an_interrupted_generation_on_a_rebuilt_parent(run, reference, pipeline, tmp_path):
    """Generation 3 stops mid-training; then generation 1 is deleted and rebuilt. Resuming generation 3
    from its old checkpoints would finish it on generation 2's *old* corpus where generation 1 came
    out different; where it came out the same, the lineage is the one it started on, and it resumes."""
    from lmcollapse.run.manifests import read_manifest, write_manifest

    uninterrupted = RunDir(tmp_path / "uninterrupted")
    shutil.copytree(reference.root, uninterrupted.root)
    assert generation(pipeline, uninterrupted, 3).returncode == 0

    result = run_cli("-q", "generation", "3", "--pipeline", str(pipeline), "--run", str(run.root), "--no-progress",
                     env={"LMCOLLAPSE_FAILPOINT": "train-step@3"})
    assert result.returncode != 0 and run.generation(3).lineage.is_file() and not run.generation(3).is_complete
    assert (run.generation(3).checkpoints / "step-000002").is_dir()  # what a resume would start from
    interrupted = tmp_path / "interrupted"
    shutil.copytree(run.root, interrupted)
    for different in (False, True):
        if different:  # generation 2 records generation 1's files as other than they come out
            shutil.rmtree(run.root)
            shutil.copytree(interrupted, run.root)
            manifest = read_manifest(run.generation(2).manifest)
            manifest.pop("manifest_sha256", None)
            write_manifest(run.generation(2).manifest, manifest | {"parent_files_sha256": "0" * 64})
        shutil.rmtree(run.generation(1).root)
        lines = status(run).stdout.splitlines()
        assert any(line.startswith("generation-03  pending: built on generation-02, which is pending now")
                   for line in lines), lines

        result = generation(pipeline, run, 3)
        assert result.returncode == 0, result.stderr[-2000:]
        log = json.loads((run.generation(3).model / "train_log.json").read_text())
        if different:
            assert sorted(p.name for p in (run.root / "stale").iterdir()) == ["generation-02", "generation-03"]
            assert log["resumed_from_step"] is None  # started afresh, not from the old lineage's checkpoint
        else:
            assert not (run.root / "stale").exists()
            assert log["resumed_from_step"] is not None  # the same lineage: its checkpoint is good
        for index in (1, 2, 3):
            for name in ("model/model.safetensors", "synthetic/shard-00000.parquet", "eval/tails.npy"):
                assert sha256_file(run.generation(index).root / name) == \
                    sha256_file(uninterrupted.generation(index).root / name)


def test_a_damaged_base_stops_before_anything_is_moved(run, pipeline):
    """An edited base manifest is damage, reported as such; the stages built on it are not
    retired as stale, so restoring the manifest mends the run."""
    manifest = run.base / "manifest.json"
    original = manifest.read_bytes()
    record = json.loads(original)
    record["parameters"] += 1
    manifest.write_text(json.dumps(record))
    before = tree_hashes(run.root, skip=("base",))
    result = generation(pipeline, run)
    assert result.returncode == 2
    assert f"{manifest} was edited after its stage completed" in last_line(result)
    assert tree_hashes(run.root, skip=("base",)) == before and not (run.root / "stale").exists()
    lines = status(run).stdout.splitlines()
    assert lines[2].startswith("base           damaged:") and lines[3] == "human          complete"
    manifest.write_bytes(original)
    assert status(run).returncode == 0
