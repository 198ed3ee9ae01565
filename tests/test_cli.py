"""The command line: bad input is one line on stderr, a non-zero exit, and no change on disk."""

from __future__ import annotations

import re
import shlex

import pytest

from helpers import REPO, micro_raw_config, run_cli, run_cli_light, tree_state, write_pipeline
from lmcollapse.cli import main
from lmcollapse.run.layout import RunDir

# End-to-end runs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built_run(tmp_path_factory, small_corpus):
    """A complete micro run (generation 0) and its pipeline file."""
    folder = tmp_path_factory.mktemp("cli")
    pipeline = write_pipeline(folder / "micro.yaml", micro_raw_config(small_corpus, ["train.epochs=1"]))
    run = folder / "run"
    assert main(["-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(run), "--no-progress"]) == 0
    return pipeline, run


def test_a_status_or_a_config_loads_no_model_library(built_run):
    """What only reads files (a run's status, a resolved config) never loads torch or the HF
    libraries: each would cost the command seconds to start."""
    pipeline, run = built_run
    for command in (["status", "--run", str(run)], ["config", "--pipeline", str(pipeline)]):
        assert run_cli_light(*command).returncode == 0


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("lmcollapse: error: ")
    return err[0]


@pytest.mark.parametrize("overrides, message", [
    (["train.epoch=1"], "unknown config key train.epoch (did you mean train.epochs?)"),
    (["generate.do_sample=true", "generate.temperature=-0.5"], "generate.temperature: must be positive"),
    (["data.regime=keep-fraction", "data.human_fraction=1.5"], "data.human_fraction: must be between 0 and 1"),
    (["train.epochs=2"], "was built from a different config (train.epochs: 1 -> 2)"),
    (["data.corpus=/nonexistent/corpus"], "was built from a different config (data.corpus: "),
    (["model.init=previous"], "was built from a different config (model.init: 'base' -> 'previous')"),
])
def test_bad_input_on_an_existing_run_changes_nothing(built_run, capsys, overrides, message):
    pipeline, run = built_run
    before = tree_state(run)
    code = main(["generation", "1", "--pipeline", str(pipeline), "--run", str(run), "--no-progress", "--set", *overrides])
    assert code == 2
    assert message in one_line_error(capsys)
    assert tree_state(run) == before


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\xff\xfe binary \x00 data\n", "is not UTF-8"),
    (b"tiny\n", "fewer than one block"),
])
def test_bad_corpus_on_a_new_run_leaves_no_run_behind(tmp_path, small_corpus, capsys, content, message):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_bytes(content)
    (corpus / "test.txt").write_bytes((small_corpus / "test.txt").read_bytes())
    pipeline = write_pipeline(tmp_path / "p.yaml", micro_raw_config(corpus))
    run = tmp_path / "run"
    assert main(["generation", "0", "--pipeline", str(pipeline), "--run", str(run), "--no-progress"]) == 2
    assert message in one_line_error(capsys)
    assert not run.exists()


@pytest.mark.parametrize("overrides, message", [
    (["seed=4294967295"], "seed: must be a whole number from 0 to 2147483647, got 4294967295"),
    (["data.subset_seed=-1"], "data.subset_seed: must be a whole number from 0 to 2147483647, got -1"),
    (["pretrain.seed=-3"], "pretrain.seed: must be a whole number from 0 to 2147483647, got -3"),
])
def test_a_seed_no_library_takes_is_refused_before_a_run_exists(tmp_path, small_corpus, capsys, overrides, message):
    """Such seeds passed the config and crashed deep in a stage (numpy, scikit-learn), leaving a
    pipeline.yaml that the same command without the override then reused."""
    pipeline = write_pipeline(tmp_path / "p.yaml", micro_raw_config(small_corpus))
    run = tmp_path / "run"
    assert main(["generation", "0", "--pipeline", str(pipeline), "--run", str(run), "--no-progress", "--set", *overrides]) == 2
    assert message in one_line_error(capsys)
    assert not run.exists()


def test_missing_corpus_on_a_new_run(tmp_path, small_corpus, capsys):
    pipeline = write_pipeline(tmp_path / "p.yaml", micro_raw_config(tmp_path / "no-such-corpus"))
    assert main(["generation", "0", "--pipeline", str(pipeline), "--run", str(tmp_path / "run")]) == 2
    assert f"corpus '{tmp_path / 'no-such-corpus'}' not found: it is neither a named corpus" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_completed_human_stage_no_longer_needs_the_corpus(built_run, monkeypatch):
    pipeline, run = built_run
    monkeypatch.setattr("lmcollapse.data.read.check_text_file", _fail_if_called)
    assert main(["-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(run), "--no-progress"]) == 0


def _fail_if_called(path):
    raise AssertionError(f"the corpus was read again: {path}")


def test_model_folder_without_weights(tmp_path, small_corpus, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    raw = micro_raw_config(small_corpus)
    raw["model"] = {"name": str(folder)}
    pipeline = write_pipeline(tmp_path / "p.yaml", raw)
    assert main(["generation", "0", "--pipeline", str(pipeline), "--run", str(tmp_path / "run")]) == 2
    assert "has no weights (model.safetensors)" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, small_corpus, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    pipeline = write_pipeline(tmp_path / "p.yaml", micro_raw_config(small_corpus))
    assert main(["generation", "0", "--pipeline", str(pipeline), "--run", str(tmp_path / "run")]) == 2
    assert "holds no pipeline.yaml" in one_line_error(capsys)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("pipeline", ["shumailov-opt125m", "shumailov-opt125m-keep10"])
def test_paper_pipelines_dry_run_offline(pipeline, tmp_path, capsys, data_dir, monkeypatch):
    # A data folder without the raw train split (whatever the user has downloaded elsewhere).
    folder = tmp_path / "data" / "wikitext-2-raw"
    folder.mkdir(parents=True)
    for name in ("wiki.valid.raw", "wiki.test.raw"):
        (folder / name).write_text(" = A =\n \n text .\n", encoding="utf-8")
    monkeypatch.setenv("LMCOLLAPSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["run", "--dry-run", "--pipeline", str(REPO / "pipelines" / f"{pipeline}.yaml"), "--run", str(run)]) == 0
    plan = capsys.readouterr().out
    assert "model: pretrained facebook/opt-125m" in plan
    assert "train: wikitext-2-raw-v1 train <- hub Salesforce/wikitext" in plan  # not in the data folder
    # Train from the hub, test from local files: building would refuse the mix, and says so.
    assert "WARNING: building would stop:" in plan and "data.mixed_sources=true" in plan
    assert "5 beam(s), repetition penalty 3" in plan and "64-64 new tokens" in plan
    assert "generation-09  missing" in plan and "steps per generation" in plan
    assert not run.exists()


def test_the_real_entry_point_exits_non_zero_with_one_line(tmp_path):
    result = run_cli("generation", "0", "--pipeline", "pipelines/shumailov-opt125m.yaml", "--run", str(tmp_path / "r"),
                     "--set", "generate.top_k=5")
    assert result.returncode == 2
    assert result.stderr.strip() == "lmcollapse: error: generate.top_k: only applies when sampling; set generate.do_sample=true"
    assert not (tmp_path / "r").exists()


def test_from_another_folder_without_pipeline_it_says_what_to_do(tmp_path):
    result = run_cli("generation", "0", cwd=tmp_path)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message
    assert message == (f"lmcollapse: error: no --pipeline given and there is no pipelines/tiny.yaml in {tmp_path}: "
                       "pass --pipeline tiny (a shipped pipeline; lmcollapse pipelines lists them), a YAML file, or "
                       "--run an existing run, whose pipeline.yaml is used")
    assert list(tmp_path.iterdir()) == []
    hinted = run_cli("config", "--pipeline", "tiny", cwd=tmp_path)  # the hint works when pasted
    assert hinted.returncode == 0 and "name: tiny" in hinted.stdout


def test_a_new_run_that_fails_to_prepare_for_any_reason_leaves_nothing(tmp_path, small_corpus, monkeypatch):
    """Not only bad input: whatever stops the preparation of a run this command created (a bug, a
    library's error) removes it, so no pipeline.yaml is left for the next command to reuse."""
    def fails(*args, **kwargs):
        raise RuntimeError("a library failed")

    monkeypatch.setattr("lmcollapse.stages.pipeline.ensure_base_and_human", fails)
    pipeline = write_pipeline(tmp_path / "p.yaml", micro_raw_config(small_corpus))
    with pytest.raises(RuntimeError, match="a library failed"):
        main(["-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(tmp_path / "run"), "--no-progress"])
    assert not (tmp_path / "run").exists()


def test_the_dry_run_refuses_what_the_command_refuses_and_stays_short(built_run, capsys):
    """`generation -1 --dry-run` exited 0; `generation 100000000 --dry-run` printed a line per generation."""
    pipeline, run = built_run
    before = tree_state(run)
    assert main(["generation", "-1", "--pipeline", str(pipeline), "--run", str(run), "--dry-run"]) == 2
    assert "generation -1 does not exist: generations count from 0" in one_line_error(capsys)
    assert main(["generation", "100000000", "--pipeline", str(pipeline), "--run", str(run), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) < 60 and lines[-1] == "  generation-10 .. generation-100000000: missing (99999991 generations)"
    assert "  generation-00  complete" in lines and "  generation-01  missing" in lines
    assert tree_state(run) == before


def test_a_command_killed_while_writing_a_new_runs_pipeline_yaml_is_resumed_by_the_same_command(tmp_path, small_corpus):
    """What it left (.pipeline.yaml.tmp) made the folder "not empty and holds no pipeline.yaml" for good."""
    from helpers import run_cli_alone

    pipeline = write_pipeline(tmp_path / "p.yaml", micro_raw_config(small_corpus, ["train.epochs=1"]))
    run = tmp_path / "run"
    args = ("-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(run), "--no-progress")
    killed = run_cli_alone(*args, env={"LMCOLLAPSE_FAILPOINT": "write:pipeline.yaml"})
    assert killed.returncode == -9 and (run / ".pipeline.yaml.tmp").exists(), killed.stderr[-2000:]
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "pipeline.yaml").is_file() and not (run / ".pipeline.yaml.tmp").exists()


def test_an_edited_pipeline_yaml_is_found_before_it_mixes_two_configs_in_one_run(tmp_path, small_corpus, capsys):
    """The run's own pipeline.yaml is the config of its next generation: edited after generations
    were built (seed 0 -> 5), the next one was built with the new settings on the old lineage."""
    from helpers import micro_run

    run, _ = micro_run(tmp_path, small_corpus, ["train.epochs=1"], last_generation=0)
    capsys.readouterr()
    text = run.pipeline_file.read_text()
    assert "\nseed: 0\n" in text
    run.pipeline_file.write_text(text.replace("\nseed: 0\n", "\nseed: 5\n"))
    before = tree_state(run.root)
    assert main(["generation", "1", "--run", str(run.root), "--no-progress"]) == 2
    assert f"{run.pipeline_file} was edited after its human stage was built with it" in one_line_error(capsys)
    assert main(["status", "--run", str(run.root)]) == 1
    assert "was edited after its human stage was built with it" in capsys.readouterr().out
    assert tree_state(run.root) == before
    run.pipeline_file.write_text(text.replace("# Resolved", "# Still the resolved"))  # comments are not settings
    assert main(["-q", "generation", "1", "--run", str(run.root), "--no-progress"]) == 0


def test_a_lost_pipeline_yaml_is_written_back_by_the_config_that_built_the_run_and_by_no_other(
        tmp_path, small_corpus, capsys):
    """A deleted pipeline.yaml left the run with no way back ("not empty: choose a new RUN"). The
    stages record the file's settings: the command that built the run writes it back."""
    pipeline = write_pipeline(tmp_path / "micro.yaml", micro_raw_config(small_corpus, ["train.epochs=1"]))
    run = RunDir(tmp_path / "run")
    args = ["-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(run.root), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    original = run.pipeline_file.read_text()
    run.pipeline_file.unlink()
    before = tree_state(run.root)
    assert main(["status", "--run", str(run.root)]) == 2
    assert re.fullmatch(rf"lmcollapse: error: run {re.escape(str(run.root))} has lost its pipeline.yaml; its human "
                        r"stage recorded the settings it was built with, and only those write it back: run the "
                        r"command that built the run \(the same pipeline and --set overrides; a run built by an "
                        r"older lmcollapse may match none: restore the file from a backup\); or choose a new "
                        r"RUN=... for other settings", one_line_error(capsys))
    assert main([*args[:2], "1", *args[3:], "--set", "seed=5"]) == 2  # another config: refused, nothing written
    assert "has lost its pipeline.yaml; its human stage recorded the settings" in one_line_error(capsys)
    assert tree_state(run.root) == before
    assert main([*args[:2], "1", *args[3:]]) == 0  # the same config: written back, and the run goes on
    assert run.pipeline_file.read_text() == original and run.generation(1).is_complete
    assert main(["status", "--run", str(run.root)]) == 0


def test_a_lost_pipeline_yaml_of_a_shipped_pipeline_is_named_with_the_command_that_writes_it_back(tmp_path):
    from lmcollapse.config import config_to_yaml, load_config
    from lmcollapse.run.manifests import PIPELINE_DIGEST, pipeline_text_digest, write_manifest
    from lmcollapse.stages.run_file import lost_pipeline_error

    run = RunDir(tmp_path / "my run")
    run.human.mkdir(parents=True)
    digest = pipeline_text_digest(config_to_yaml(load_config(REPO / "pipelines" / "tiny-keep10.yaml")))
    write_manifest(run.human_manifest, {PIPELINE_DIGEST: digest})
    message = str(lost_pipeline_error(run, "human", digest))
    command = message.split("write it back: ")[1].split("; or choose")[0]
    assert shlex.split(command) == ["make", "generation-4", f"PIPELINE={REPO / 'pipelines' / 'tiny-keep10.yaml'}",
                                    f"RUN={run.root}"]


def test_a_stray_shard_in_a_complete_generation_is_found_and_never_read(tmp_path, small_corpus, capsys):
    """A shard the manifest does not record was read as part of the corpus (34 blocks instead of 24)."""
    import shutil

    from helpers import micro_run

    run, _ = micro_run(tmp_path, small_corpus, ["train.epochs=1"], last_generation=1)
    capsys.readouterr()
    synthetic = run.generation(0).synthetic
    stray = synthetic / "shard-00009.parquet"
    shutil.copy(synthetic / "shard-00000.parquet", stray)
    shutil.rmtree(run.generation(1).root)
    assert main(["status", "--run", str(run.root)]) == 1
    assert f"{stray} is not one of the shards generation-00 recorded" in capsys.readouterr().out
    assert main(["generation", "1", "--run", str(run.root), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert str(stray) in err and f"rm {stray}" in err
    assert not run.generation(1).root.exists()


def test_an_edited_human_mauve_is_damage_mended_by_removing_that_file_alone(tmp_path, small_corpus, capsys):
    """It passed status, and the only mend offered was rm -r human, which sent every generation to
    stale/. It is a reference value: removing it leaves the human row without a mauve, nothing stale."""
    import json

    from helpers import micro_run, tree_hashes

    run, _ = micro_run(tmp_path, small_corpus, ["train.epochs=1"], last_generation=1)
    capsys.readouterr()
    generations = tree_hashes(run.generation(1).root)
    run.human_mauve.write_text(json.dumps({"x": 1}))
    assert main(["status", "--run", str(run.root)]) == 1
    assert f"rm {run.human_mauve} (the human row's mauve is then left out" in capsys.readouterr().out
    assert main(["generation", "1", "--run", str(run.root), "--no-progress"]) == 2  # building stops on it too
    assert f"rm {run.human_mauve} (the human row's mauve" in one_line_error(capsys)
    run.human_mauve.unlink()  # the mend
    assert main(["-q", "generation", "1", "--run", str(run.root), "--no-progress"]) == 0
    assert tree_hashes(run.generation(1).root) == generations and not (run.root / "stale").exists()
    assert main(["status", "--run", str(run.root)]) == 0


def test_the_way_on_with_the_runs_own_config_builds_the_generation_asked_for(built_run, capsys):
    """`generation 3 --set ...` refused: the way on named generation 1 (the pipeline's last)."""
    from lmcollapse.run.commands import build_command

    pipeline, run = built_run
    assert main(["generation", "3", "--run", str(run), "--no-progress", "--set", "train.epochs=2"]) == 2
    assert one_line_error(capsys).endswith(f"go on with the run's own: {build_command(run, 3)}")
