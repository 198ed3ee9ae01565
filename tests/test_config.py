"""Config: shipped pipelines load, overrides apply, bad keys and values are one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from helpers import REPO, run_cli
from lmcollapse.config import (
    PipelineConfig,
    config_to_dict,
    describe_config,
    field_docs,
    flatten,
    load_config,
    parse_overrides,
    result_affecting_differences,
)
from lmcollapse.errors import ConfigError

PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_shipped_pipelines_load_and_open_with_their_command(path: Path):
    config = load_config(path)
    assert config.name == path.stem
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# make "), "each pipeline opens with the command that runs it"
    assert config.description


def test_paper_pipelines_match_the_reference_experiment():
    paper = load_config(REPO / "pipelines" / "shumailov-opt125m.yaml")
    keep = load_config(REPO / "pipelines" / "shumailov-opt125m-keep10.yaml")
    for config in (paper, keep):
        assert config.model.name == "facebook/opt-125m" and config.model.init == "generation-0"
        assert (config.train.select, config.data.validation_split) == ("best-validation", "validation")
        assert config.pretrain.corpus is None  # "auto": a pretrained model is not pretrained again
        assert (config.data.corpus, config.data.block_size) == ("wikitext-2-raw-v1", 64)
        assert (config.generate.num_beams, config.generate.repetition_penalty) == (5, 3.0)
        assert config.generate.min_new_tokens == config.generate.max_new_tokens == 64
        assert (config.train.learning_rate, config.train.min_learning_rate, config.train.batch_size) == (2e-5, 1e-6, 128)
    assert (paper.train.epochs, paper.data.regime) == (5, "replace")
    assert (keep.train.epochs, keep.data.regime, keep.data.human_fraction) == (10, "keep-fraction", 0.1)


VARIANTS = [p for p in PIPELINES if "base" in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_each_variant_differs_from_its_base_exactly_in_the_keys_it_declares(path: Path):
    raw = yaml.safe_load(path.read_text())
    declared = {k for k in flatten({k: v for k, v in raw.items() if k not in ("base", "description")})}
    base = config_to_dict(load_config(path.parent / raw["base"]))
    variant = config_to_dict(load_config(path))
    changed = {k for k, v in flatten(variant).items() if flatten(base)[k] != v and k not in ("name", "description")}
    assert changed == declared  # nothing restated, nothing lost


def test_a_variant_may_not_loop_or_name_a_missing_base(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=f"base pipeline {tmp_path / 'missing.yaml'} not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: c.yaml\ndescription: mine\ngenerate: {top_k: 5, do_sample: true}\n")
    (tmp_path / "c.yaml").write_text("description: theirs\ngenerate: {num_beams: 1}\nseed: 7\n")
    config = load_config(tmp_path / "d.yaml")
    assert (config.name, config.description, config.seed) == ("d", "mine", 7)
    assert (config.generate.num_beams, config.generate.top_k) == (1, 5)  # sections merge key by key


def test_dotted_overrides_are_parsed_as_yaml_values():
    assert parse_overrides(["train.epochs=1 generate.num_beams=1", "seed=3", "model.name=facebook/opt-125m"]) == {
        "train.epochs": 1, "generate.num_beams": 1, "seed": 3, "model.name": "facebook/opt-125m"}
    config = load_config(REPO / "pipelines" / "tiny.yaml", ["train.epochs=1", "train.learning_rate=1e-3", "data.max_train_blocks=null",
                                                            "train.select=last"])
    assert config.train.epochs == 1
    assert config.train.learning_rate == 1e-3  # "1e-3" is a string in YAML 1.1; accepted as a number
    assert config.data.max_train_blocks is None


@pytest.mark.parametrize("override, message", [
    ("train.epoch=1", "unknown config key train.epoch (did you mean train.epochs?)"),
    ("trian.epochs=1", "unknown config key trian"),
    ("train.epochs=abc", "train.epochs: expected an integer, got 'abc'"),
    ("train.epochs=0", "train.epochs: must be at least 1, got 0"),
    ("generate.do_sample=yes-please", "generate.do_sample: expected true or false"),
    ("data.regime=accumulate-everything", "data.regime: expected one of replace, keep-fraction"),
    ("generate.do_sample=false generate.temperature=0.7", "generate.temperature: only applies when sampling; set generate.do_sample=true"),
    ("data.human_fraction=1.5", "data.human_fraction: must be between 0 and 1, got 1.5"),
    ("data.human_fraction=0.1", "data.human_fraction: has no effect with data.regime=replace"),
    ("generate.min_new_tokens=100", "generate.min_new_tokens: must not exceed generate.max_new_tokens (64)"),
    ("model.num_heads=3", "model.num_heads: must divide hidden_size (128), got 3"),
    ("data.heldout_split=validation", "data.heldout_split: must differ from train_split"),
    ("train.epochs", "override 'train.epochs' is not key=value"),
    ("train=3", "train: expected a section"),
    ("pretrain.epochs=0", "pretrain.epochs: must be at least 1, got 0"),
    ("pretrain.min_learning_rate=0.5", "pretrain.min_learning_rate: must be between 0 and learning_rate (0.001)"),
])
def test_bad_overrides_name_the_key(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "pipelines" / "tiny.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["generate.do_sample=true", "generate.temperature=-1"], "generate.temperature: must be positive, got -1.0"),
    (["generate.do_sample=true", "generate.top_p=1.5"], "generate.top_p: must be in (0, 1]"),
    (["data.regime=keep-fraction", "data.human_fraction=0"], "data.human_fraction: must be above 0"),
    (["model.name=facebook/opt-125m", "model.hidden_size=64"], "model.hidden_size: only applies to the presets"),
    (["generate.max_new_tokens=250"], "generate.max_new_tokens: prompt (64) + new tokens (250) = 314 exceeds the "
     "128 positions the base was trained on (pretrain.block_size): set generate.max_new_tokens=64"),
    (["pretrain.block_size=512", "generate.max_new_tokens=250"], "pretrain.block_size: is 512 but model.max_positions is 256"),
    (["pretrain.corpus=null", "data.block_size=512", "generate.prompt_tokens=64", "evaluate.window=128"],
     "model.max_positions: is 256 but sequences reach 512 tokens"),
    (["generate.prompt_tokens=100"], "generate.prompt_tokens: must not exceed data.block_size (64)"),
    (["data.block_size=100", "generate.prompt_tokens=100"], "prompt (100) + new tokens (64) = 164 exceeds the 128 "
     "positions the base was trained on (pretrain.block_size): set generate.min_new_tokens=28 generate.max_new_tokens=28 "
     "or generate.prompt_tokens=64"),
    (["pretrain.corpus=null"], "positions the base was trained on (data.block_size (a base trained from scratch)): "
     "set pretrain.corpus=wikitext-2-v1 (a pretrained base)"),
    (["evaluate.window=256"], "evaluate.window: 256 tokens exceeds the 128 positions the base was trained on "
     "(pretrain.block_size): set evaluate.window=128 or less"),
    (["model.name=facebook/opt-125m", "pretrain.corpus=wikitext-2-v1"],
     "pretrain.corpus: pretrains a preset; facebook/opt-125m is already pretrained: set pretrain.corpus=null"),
    (["pretrain.corpus=wikitext-2-raw-v1", "pretrain.split=validation"], "pretrain.split: 'validation' of "
     "wikitext-2-raw-v1 is also fine-tuning or held-out text"),
    (["data.validation_split=test"], "data.validation_split: must differ from heldout_split ('test')"),
    (["train.select=best"], "train.select: expected one of last, best-validation, got 'best'"),
    (["data.max_train_blocks=null"], "train.select: best-validation needs validation blocks, but with "
     "data.max_train_blocks=null every block of the train split is a training block"),
    (["pretrain.block_size=96"], "exceeds the 96 positions the base was trained on (pretrain.block_size): set "
     "generate.min_new_tokens=32 generate.max_new_tokens=32 or generate.prompt_tokens=32"),
])
def test_impossible_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(REPO / "pipelines" / "tiny.yaml", overrides)
    assert message in str(err.value)


def test_yaml_problems_are_one_line(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="pipeline file .*nope.yaml not found"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml line .*not valid YAML"):
        load_config(broken)


def test_every_field_is_documented():
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert f.name in docs, f"{cls.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(f.type) or isinstance(f.default_factory, type):
                walk(f.default_factory)
    walk(PipelineConfig)
    text = describe_config(load_config(REPO / "pipelines" / "tiny.yaml"))
    assert "# Peak AdamW learning rate." in text and "  learning_rate: 0.0005" in text


def test_fingerprint_ignores_operational_keys_only():
    base = load_config(REPO / "pipelines" / "tiny.yaml")
    operational = load_config(REPO / "pipelines" / "tiny.yaml", ["train.checkpoint_every=7", "evaluate.batch_size=3", "generations=9"])
    assert base.fingerprint() == operational.fingerprint()
    assert result_affecting_differences(base, operational) == []
    changed = load_config(REPO / "pipelines" / "tiny.yaml", ["train.epochs=1"])
    assert base.fingerprint() != changed.fingerprint()
    assert result_affecting_differences(base, changed) == [("train.epochs", 5, 1)]


def test_a_pipeline_that_is_not_utf8_is_a_one_line_error(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("description: caf\u00e9 au lait\nseed: 0\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(latin)
    message = str(err.value)
    assert f"{latin} line 1: not UTF-8 text (byte 0xe9)" in message and "re-encode the file as UTF-8" in message
    assert "\n" not in message
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("seed: 0\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="not UTF-8 text.*re-encode"):
        load_config(utf16)


def test_a_pipeline_with_a_bad_character_is_a_one_line_error(tmp_path):
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"seed: 0\x00\n")
    with pytest.raises(ConfigError, match=r"nul.yaml line 1: not valid YAML \(character U\+0000 is not allowed") as err:
        load_config(nul)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: 1\nseed: 0\ntrain:\n  epochs: 2\n", "line 4: duplicate key train (first set on line 1)"),
    ("train:\n  epochs: 1\n  batch_size: 8\n  epochs: 2\n", "line 4: duplicate key train.epochs (first set on line 2)"),
    ("seed: 0\nseed: 1\n", "line 2: duplicate key seed (first set on line 1)"),
    ("data:\n  human_fraction_schedule: [0.5]\n  regime: keep-fraction\n  'regime': replace\n",
     "line 4: duplicate key data.regime (first set on line 3)"),
])
def test_duplicate_keys_are_errors_naming_key_and_line(tmp_path, text, message):
    pipeline = tmp_path / "dup.yaml"
    pipeline.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(pipeline)
    assert f"{pipeline} {message}" in str(err.value) and "keep one of them" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_same_key_in_different_sections_and_yaml_merges_are_fine(tmp_path):
    pipeline = tmp_path / "ok.yaml"
    pipeline.write_text("train: &shared\n  batch_size: 8\ngenerate:\n  batch_size: 8\n"
                        "evaluate:\n  <<: {batch_size: 4}\n  batch_size: 16\n")
    config = load_config(pipeline)
    assert config.train.batch_size == config.generate.batch_size == 8
    assert config.evaluate.batch_size == 16  # an explicit key overrides a merged one: not a duplicate


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n\n# and another\n", "---\n", "~\n"])
def test_an_empty_pipeline_is_an_error(tmp_path, text):
    pipeline = tmp_path / "empty.yaml"
    pipeline.write_text(text)
    with pytest.raises(ConfigError, match=r"pipeline file .*empty.yaml is empty .*start from a copy of pipelines/tiny.yaml"):
        load_config(pipeline)


def test_a_pipeline_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"pipeline file .* is a directory: pass a YAML file \(e.g. pipelines/tiny.yaml\)"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"is a directory: pass a YAML file \(e.g. .*pipelines/tiny.yaml\)"):
        load_config(REPO / "pipelines")


@pytest.mark.parametrize("content", [b"seed: 0\nseed: 1\n", b"", b"seed: caf\xe9\n"], ids=["duplicate", "empty", "latin1"])
def test_pipeline_file_errors_on_the_command_line(tmp_path, content):
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_bytes(content)
    result = run_cli("config", "--pipeline", str(pipeline), timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("lmcollapse: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert str(pipeline) in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_set_counts_and_a_key_set_twice_is_refused(capsys):
    """`--set a --set b` kept only the last --set; `--set k=1 k=2` kept the last value silently."""
    from lmcollapse.cli import main

    assert main(["config", "--pipeline", "tiny", "--set", "train.epochs=2", "--set", "seed=7"]) == 0
    resolved = capsys.readouterr()
    assert "seed: 7" in resolved.out and "epochs: 2" in resolved.out
    assert main(["config", "--pipeline", "tiny", "--set", "train.epochs=2", "train.epochs=3"]) == 2
    assert "override train.epochs is given twice (train.epochs=2 and train.epochs=3): give it once" in capsys.readouterr().err
    assert main(["generation", "0", "--pipeline", "tiny", "--seeds", "0", "1", "--set", "seed=3", "--dry-run"]) == 2
    assert "--set seed=... and --seeds/SEEDS both choose the seed" in capsys.readouterr().err


@pytest.mark.parametrize("value, accepted", [("", False), ("0", False), ("false", False), ("No", False), ("off", False),
                                             ("1", True), ("true", True), ("YES", True), ("on", True)])
def test_accept_changed_from_the_environment_is_a_yes_or_a_no(monkeypatch, value, accepted):
    """ACCEPT_CHANGED=false turned accepting changed files on (anything but "" and 0 did)."""
    from lmcollapse.cli import env_flag

    monkeypatch.setenv("ACCEPT_CHANGED", value)
    assert env_flag("ACCEPT_CHANGED") is accepted


def test_an_unreadable_accept_changed_is_refused(monkeypatch):
    from lmcollapse.cli import env_flag
    from lmcollapse.errors import LmcollapseError

    monkeypatch.setenv("ACCEPT_CHANGED", "maybe")
    with pytest.raises(LmcollapseError, match="ACCEPT_CHANGED='maybe' is neither yes nor no: set ACCEPT_CHANGED=1 or"):
        env_flag("ACCEPT_CHANGED")


def test_a_hint_for_a_folder_make_would_change_calls_the_package(monkeypatch):
    """make expands `$(...)` in a variable and the Makefile's double quotes let a shell run
    backticks: such a folder gets the package's command, which a shell passes on unchanged."""
    import shlex
    import sys

    from lmcollapse.run.commands import build_command

    monkeypatch.chdir(REPO)
    assert build_command(Path("runs/tiny"), 2) == "make generation-2 PIPELINE=runs/tiny/pipeline.yaml RUN=runs/tiny"
    odd = Path("runs/a$(id)`id`")
    hint = build_command(odd, 2, accept_changed=True)
    assert shlex.split(hint) == [sys.executable, "-m", "lmcollapse", "generation", "2", "--run", str(odd.resolve()),
                                 "--accept-changed"]


def test_status_hints_outside_the_repository_call_the_package(tmp_path, monkeypatch, capsys):
    """`make ...` works from the repository only; elsewhere the hint is this interpreter's command,
    and a study's folder (runs two levels down) is a folder of runs, not a place for a new one."""
    import shlex
    import sys

    from lmcollapse.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "study" / "variant" / "seed-0").mkdir(parents=True)
    (tmp_path / "study" / "variant" / "seed-0" / "pipeline.yaml").write_text("name: x\n")
    assert main(["status", "--run", "study"]) == 2
    hint = capsys.readouterr().err.strip().split("status checks one run: ")[1]
    assert shlex.split(hint) == [sys.executable, "-m", "lmcollapse", "status", "--run", "study/variant/seed-0"]
    assert main(["status", "--run", "empty"]) == 2
    hint = capsys.readouterr().err.strip().split("start one with ")[1]
    assert shlex.split(hint) == [sys.executable, "-m", "lmcollapse", "generation", "0", "--pipeline", "tiny", "--run", "empty"]


def test_a_folder_named_like_a_shipped_pipeline_does_not_hide_it(tmp_path, monkeypatch):
    """The hint `--pipeline tiny`, given where a tiny/ folder exists (a study's variant folder),
    said "pipeline file tiny is a directory"."""
    from lmcollapse.config.shipped import resolve_pipeline, shipped_pipelines

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert resolve_pipeline("tiny") == shipped_pipelines()["tiny"]
    (tmp_path / "mine").mkdir()
    assert resolve_pipeline("mine") == Path("mine")  # a folder not named like a shipped one: the caller says what it is


def test_a_study_hint_is_make_in_the_repository_and_the_package_elsewhere(tmp_path, monkeypatch):
    import shlex
    import sys

    from lmcollapse.run.commands import study_command

    monkeypatch.chdir(REPO)
    assert study_command("status", Path("studies/regimes.yaml")) == "make study-status STUDY=studies/regimes.yaml"
    assert shlex.split(study_command("run", Path("my study.yaml"), "--dry-run")) == \
        [sys.executable, "-m", "lmcollapse", "study", "run", "my study.yaml", "--dry-run"]  # make's target takes no --dry-run
    monkeypatch.chdir(tmp_path)
    assert shlex.split(study_command("run", Path("s.yaml"))) == [sys.executable, "-m", "lmcollapse", "study", "run", "s.yaml"]


def test_overrides_are_not_silently_reinterpreted_by_yaml():
    """seed=010 ran seed 8 (YAML 1.1 octal); description=run #3 stored "run" (a comment);
    heldout_split=no said "expected text, got False" with no way out; train.lr suggested lora."""
    from lmcollapse.config.loading import parse_overrides

    with pytest.raises(ConfigError, match=r"override seed=010: YAML reads a number with a leading 0 as octal \(8\): "
                                          r"write seed=10, or quote it as text \(seed='010'\)"):
        parse_overrides(["seed=010"])
    assert parse_overrides(["description=run #3 of 5"]) == {"description": "run #3 of 5"}
    assert parse_overrides(["seed=0", "train.learning_rate=0.003"]) == {"seed": 0, "train.learning_rate": 0.003}
    with pytest.raises(ConfigError, match=r"data.heldout_split: expected text, got False \(YAML reads yes, no, on and "
                                          r"off as true or false\): quote it, e.g. data.heldout_split='no'"):
        load_config(REPO / "pipelines" / "tiny.yaml", ["data.heldout_split=no"])
    with pytest.raises(ConfigError, match=r"unknown config key train.lr \(did you mean train.learning_rate\?\)"):
        load_config(REPO / "pipelines" / "tiny.yaml", ["train.lr=0.1"])


def test_a_rebuild_hint_in_a_run_named_like_a_chain_family_names_that_run(tmp_path):
    """family-NN/base and family-NN/human belong to the chain run above; a run folder that is
    itself named family-01 got a hint that deleted its generation and rebuilt in its parent."""
    from lmcollapse.run.commands import rebuild_command

    run = tmp_path / "family-01"
    (run / "generation-01").mkdir(parents=True)
    hint = rebuild_command(run / "generation-01")
    assert f"--run {run}" in hint or f"RUN={run}" in hint
    chain = tmp_path / "chain"
    (chain / "family-01" / "base").mkdir(parents=True)
    hint = rebuild_command(chain / "family-01" / "base")
    assert (f"--run {chain}" in hint or f"RUN={chain}" in hint) and "family-01 " not in hint.split("&&")[1]
