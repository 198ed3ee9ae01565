"""``lmcollapse export``: a self-contained copy of a run to share (``make export RUN=... TO=...``).

The copy holds the run's resolved config, its metrics, the human blocks and every complete
generation (checked against its manifest: a damaged or stale one is left out, and so is a run
that is being written) with its corpus, model, evaluation and manifest, the base model, and the report if one was
written, each corpus with its dataset card (``datasets.load_dataset(<folder>)`` loads it) and each
model with its card (``from_pretrained(<folder>)`` loads it), plus a ``README.md`` for the whole.
Left out: checkpoints, stages moved to ``stale/``, partial generations, the lock. The copy is
written beside the target and renamed into place, so a failed export leaves nothing.

``--push-to-hub owner/name`` uploads the copy as a dataset repository with ``huggingface_hub``
(needs the hub and a token, ``huggingface-cli login``); it cannot be tested offline.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from pathlib import Path

from lmcollapse.config import load_config
from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.atomic import remove_path, temporary_sibling, write_text_atomic
from lmcollapse.run.commands import build_command
from lmcollapse.run.integrity import COMPLETE, verify_run
from lmcollapse.run.layout import RunDir
from lmcollapse.run.lock import lock_holder
from lmcollapse.stages.cards import CARD

log = logging.getLogger(__name__)

LEFT_OUT = ("checkpoints", "stale", ".lock", ".*.tmp")


def export_run(run: RunDir, destination: Path) -> Path:
    """Copy what ``run`` computed into ``destination`` (which must not exist, or be empty)."""
    if not run.pipeline_file.is_file():
        raise LmcollapseError(f"{run.root} is not a run (no {run.pipeline_file.name}): name a run folder with --run")
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise LmcollapseError(f"{destination} exists and is not empty: export into a new folder (--to ...)")
    holder = lock_holder(run)
    if holder is not None:
        raise LmcollapseError(f"run {run.root} is being written ({holder}): export it when that command has finished")
    checks = {check.name: check for check in verify_run(run)}
    for name in ["base", "human", *(n for n in checks if n.startswith("family-"))]:  # a chain's families too
        if name in checks and checks[name].state != COMPLETE:
            raise LmcollapseError(f"run {run.root}: {name} is {checks[name].state} ({checks[name].problem}); "
                                  f"mend it first (lmcollapse status --run {shlex.quote(str(run.root))} says how)")
    complete = [g for g in run.complete_generations() if checks.get(g.name) and checks[g.name].state == COMPLETE]
    if not complete:
        raise LmcollapseError(f"run {run.root} has no complete, intact generation to export yet: build one first "
                              f"({build_command(run.root, 0)})")
    done = {g.name for g in complete}
    partial = [g.name for g in run.generations_on_disk() if g.name not in done]
    uncarded = [folder.relative_to(run.root).as_posix() for folder in [run.human, *(g.synthetic for g in complete)]
                if not (folder / CARD).is_file()]
    files = [run.root / name for name in (run.pipeline_file.name, run.metrics_csv.name, run.metrics_json.name)]
    folders = [run.base, run.human, *(f.root for f in run.families_on_disk()), *(g.root for g in complete), run.report]
    refuse_links(run, files + folders)
    scratch = temporary_sibling(destination)
    remove_path(scratch)
    try:
        scratch.mkdir(parents=True)
        for path in files:
            if path.is_file():
                shutil.copy2(path, scratch / path.name)
        ignore = shutil.ignore_patterns(*LEFT_OUT)
        for folder in folders:
            if folder.is_dir():
                shutil.copytree(folder, scratch / folder.name, ignore=ignore)
        write_text_atomic(scratch / "README.md", overview(run, [g.name for g in complete], partial))
        if destination.exists():
            destination.rmdir()
        os.replace(scratch, destination)
    except BaseException:
        remove_path(scratch)
        raise
    if partial:
        log.warning("left out %s: not complete or not intact (lmcollapse status --run %s says which)",
                    ", ".join(partial), shlex.quote(str(run.root)))
    if uncarded:
        log.warning("%s have no dataset card (built by an older lmcollapse): load their Parquet files by name",
                    ", ".join(uncarded))
    return destination


def refuse_links(run: RunDir, paths: list[Path]) -> None:
    """An export copies what the run computed, nothing else: a symbolic link anywhere in it (which
    copying would follow, to a file or a whole tree outside the run) stops it before anything is written."""
    for path in paths:
        found = [path] if path.is_symlink() else []
        if path.is_dir() and not found:
            for folder, subfolders, names in os.walk(path):
                found += [Path(folder, name) for name in (*subfolders, *names) if Path(folder, name).is_symlink()]
        if found:
            link = found[0]
            raise LmcollapseError(f"run {run.root} holds a symbolic link, {link.relative_to(run.root)} -> "
                                  f"{os.readlink(link)}: an export copies the run's own files only; remove the link "
                                  f"(rm {shlex.quote(str(link))}) and export again")


def overview(run: RunDir, generations: list[str], partial: list[str]) -> str:
    config = load_config(run.pipeline_file)
    table = (run.report / "metrics.md").read_text(encoding="utf-8") if (run.report / "metrics.md").is_file() else ""
    lines = [
        "---", "tags:", "- synthetic", "- model-collapse", "- lmcollapse", "---", "",
        f"# lmcollapse run: {config.name}", "",
        config.description or "", "",
        f"Seed {config.seed}; {len(generations)} generation(s): {', '.join(generations)}. `pipeline.yaml` is the resolved "
        "config (rebuild with `lmcollapse run --pipeline pipeline.yaml`), `metrics.csv` one row per generation.", "",
        "## What is here", "",
        "- `human/`: the human blocks, a dataset (`datasets.load_dataset(\"human\")`: train, test, validation)",
        "- `generation-NN/synthetic/`: generation NN's synthetic corpus, a dataset (`datasets.load_dataset(...)`)",
        "- `generation-NN/model/`: generation NN's model (`AutoModelForCausalLM.from_pretrained(...)`), with its card",
        "- `generation-NN/manifest.json`: what it consumed and produced (sha256), its metrics; `eval/`: per-block results",
        "- `base/`: the base model every generation descends from",
        "- `report/`: tables and figures (`index.html` opens in a browser)" if run.report.is_dir() else "",
        "",
    ]
    if partial:
        lines += [f"Not included (not complete when exported): {', '.join(partial)}.", ""]
    if table:
        lines += ["## Metrics", "", table]
    return "\n".join(line for line in lines) + "\n"


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` as the dataset repository ``repo_id``; the repository's address."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset")
    except Exception as err:  # offline, no token, no rights: all one line
        reason = error_reason(err, 200)
        raise LmcollapseError(f"could not push {folder} to the hub as {repo_id} ({reason}): check the network and "
                              f"`huggingface-cli login`; the export itself is complete in {folder}") from None
    return f"https://huggingface.co/datasets/{repo_id}"
