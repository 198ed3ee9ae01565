"""Dataset and model cards, and `lmcollapse export`: every corpus of a run loads with
datasets.load_dataset(<folder>) as it is, every model says what it is, and an export is a
self-contained copy with the same data."""

from __future__ import annotations

import datasets
import pytest
import yaml

from helpers import micro_run, run_cli, tree_hashes
from lmcollapse.data.records import concatenate, read_records, record_features
from lmcollapse.engine.modeling import load_model
from lmcollapse.run.integrity import COMPLETE, verify_run
from lmcollapse.run.layout import RunDir
from lmcollapse.stages.cards import CARD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, small_corpus):
    run, _ = micro_run(tmp_path_factory.mktemp("cards"), small_corpus, ["train.select=best-validation",
                                                                       "data.max_train_blocks=20"])
    root = run.root
    return RunDir(root)


def header(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_every_corpus_loads_as_a_dataset_with_its_card(shared_run):
    run = shared_run
    for index in (0, 1):
        folder = run.generation(index).synthetic
        loaded = datasets.load_dataset(str(folder), split="train")
        shards = concatenate([read_records(p) for p in run.generation(index).synthetic_shards()])
        assert loaded.features == record_features() and loaded.to_dict() == shards.to_dict()
        meta, text = header(folder / CARD)
        assert meta["dataset_info"]["splits"][0]["num_examples"] == len(shards)
        assert meta["tags"] == ["synthetic", "model-collapse", "lmcollapse"] and meta["license"] == "other"
        manifest = __import__("json").loads(run.generation(index).manifest.read_text())
        assert f"`{shards['model'][0].removeprefix('sha256:')}`" in text  # the generating model, by content
        assert f"| `ppl_blocks` ↓ | {manifest['metrics']['ppl_blocks']:.2f} |" in text
        assert '"num_beams": 1' in text and "`parent`: the id of the record it continues" in text
    human = datasets.load_dataset(str(run.human))
    assert set(human) == {"train", "test", "validation"}
    assert human["train"].to_dict() == read_records(run.human_train).to_dict()
    assert human["test"].to_dict() == read_records(run.human_heldout).to_dict()


def test_every_model_has_a_card_and_the_cards_are_recorded_outputs(shared_run):
    run = shared_run
    meta, text = header(run.generation(1).model / CARD)
    assert meta["library_name"] == "transformers"
    assert "fine-tuned from `base/model`" in text or "fine-tuned from `generation-00/model`" in text
    assert "Held-out human perplexity" in text
    manifest = __import__("json").loads(run.generation(1).manifest.read_text())
    assert {"synthetic/README.md", "model/README.md"} <= set(manifest["files"])
    assert all(check.state == COMPLETE for check in verify_run(run))


def test_export_is_a_self_contained_copy(shared_run, tmp_path):
    run = shared_run
    result = run_cli("export", "--run", str(run.root), "--to", str(tmp_path / "shared"))
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "shared"
    assert (copy / "README.md").is_file() and (copy / "pipeline.yaml").is_file() and (copy / "metrics.csv").is_file()
    assert not list(copy.rglob("checkpoints")) and not (copy / ".lock").exists()
    original = tree_hashes(run.root, skip=("checkpoints", ".lock", "stale", "tracking"))
    exported = tree_hashes(copy)
    exported.pop("README.md")
    assert exported == original  # every file of the run, byte for byte, and nothing else
    loaded = datasets.load_dataset(str(copy / "generation-01" / "synthetic"), split="train")
    assert loaded.to_dict() == datasets.load_dataset(str(run.generation(1).synthetic), split="train").to_dict()
    model, _ = load_model(copy / "generation-01" / "model")
    assert model.config.model_type == "opt"
    again = run_cli("export", "--run", str(run.root), "--to", str(copy))
    assert again.returncode == 2 and "exists and is not empty: export into a new folder" in again.stderr
    pushed = run_cli("export", "--run", str(run.root), "--to", str(tmp_path / "other"), "--push-to-hub", "me/collapse")
    assert pushed.returncode == 2 and "could not push" in pushed.stderr and "the export itself is complete" in pushed.stderr
    assert (tmp_path / "other" / "README.md").is_file()


@pytest.mark.parametrize("where", ["generation-01/eval/secret", "report/leak.txt", "generation-00/outside"])
def test_an_export_refuses_a_run_that_holds_a_symbolic_link(shared_run, tmp_path, capsys, where):
    """Copying would follow the link: a file (or a whole tree) from outside the run in the export,
    and on the hub with --push-to-hub."""
    import shutil

    from lmcollapse.cli import main

    run = tmp_path / "run"
    shutil.copytree(shared_run.root, run, symlinks=True)
    (run / "report").mkdir(exist_ok=True)
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "key").write_text("not the run's")
    (run / where).symlink_to(outside if where.endswith("outside") else outside / "key")
    assert main(["export", "--run", str(run), "--to", str(tmp_path / "shared")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"holds a symbolic link, {where} -> {outside}" in err and "remove the link" in err
    assert not (tmp_path / "shared").exists()
