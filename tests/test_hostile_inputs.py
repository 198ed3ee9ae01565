"""Hostile and mistaken inputs, walked in one place: each is refused with one line naming the
problem and the fix, exit code 2, no traceback, and nothing created or changed on disk.

The next one is a line to add to ``REFUSED`` (inputs that need no built run) or to
``REFUSED_ON_A_RUN`` (inputs against a complete micro run). Each case builds its input in an
empty folder and returns the command's arguments; the walk checks the rest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import micro_config, micro_opt, micro_raw_config, write_pipeline
from lmcollapse.cli import main
from lmcollapse.config import load_config
from lmcollapse.errors import ConfigError
from lmcollapse.run.layout import RunDir

pytestmark = pytest.mark.slow


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders too) with its content: equal iff nothing was created,
    removed or rewritten."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.name == ".lock":
            continue
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[relative] = f"-> {os.readlink(path)}"
        elif path.is_file():
            state[relative] = path.read_bytes().hex()[:4000] + str(path.stat().st_mtime_ns)
        else:
            state[relative] = "folder"
    return state


def refused(capsys, argv: list[str], root: Path, message: str, tree: Path | None = None) -> str:
    """Run ``lmcollapse <argv>`` in this process; assert exit 2, one line holding ``message``,
    and ``tree`` (default ``root``) unchanged."""
    tree = tree or root
    before = snapshot(tree)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("lmcollapse: error: "), err
    assert message in err[0], err[0]
    assert snapshot(tree) == before
    return err[0]


# ---------------------------------------------------------------------------- inputs of a new run

@dataclass
class Case:
    name: str
    make: Callable[[Path, Path], list[str]]  # (empty folder, a good corpus) -> the command's arguments
    message: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # a folder under the empty one, created before the command runs


def _pipeline(tmp: Path, corpus: Path, overrides: list[str] | None = None, **model) -> Path:
    raw = micro_raw_config(corpus, overrides)
    raw.pop("name")
    if model:
        raw["model"] = model
    return write_pipeline(tmp / "p.yaml", raw)


def _named(name: str):
    def make(tmp: Path, corpus: Path) -> list[str]:
        raw = micro_raw_config(corpus)
        raw["name"] = name
        return ["generation", "0", "--pipeline", str(write_pipeline(tmp / "p.yaml", raw))]
    return make


def _name_override(value: str):
    def make(tmp: Path, corpus: Path) -> list[str]:
        return ["generation", "0", "--pipeline", str(_pipeline(tmp, corpus)), "--set", f"name={value}"]
    return make


def _custom_code_model(tmp: Path, corpus: Path) -> list[str]:
    folder = tmp / "custom"
    folder.mkdir()
    # Its code would leave a mark if it ran; the case checks that nothing is created.
    (folder / "config.json").write_text(json.dumps({
        "model_type": "hostile-model", "architectures": ["HostileModel"],
        "auto_map": {"AutoConfig": "configuration_hostile.HostileConfig",
                     "AutoModelForCausalLM": "modeling_hostile.HostileModel"}}))
    for module in ("configuration_hostile.py", "modeling_hostile.py"):
        (folder / module).write_text(f"open({str(tmp / 'RAN')!r}, 'w').write('ran')\n")
    (folder / "model.safetensors").write_bytes(b"")
    return ["generation", "0", "--pipeline", str(_pipeline(tmp, corpus, name=str(folder))), "--run", str(tmp / "run")]


def _custom_code_model_planned(tmp: Path, corpus: Path) -> list[str]:
    return [*_custom_code_model(tmp, corpus), "--dry-run"]


class _RunsCodeWhenUnpickled:
    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


def _pickled_model(tmp: Path, corpus: Path) -> list[str]:
    import torch

    folder = tmp / "pickled"
    folder.mkdir()
    micro_opt().config.save_pretrained(folder)
    torch.save({"weights": _RunsCodeWhenUnpickled(tmp / "RAN")}, folder / "pytorch_model.bin")
    return ["generation", "0", "--pipeline", str(_pipeline(tmp, corpus, name=str(folder))), "--run", str(tmp / "run")]


def _corpus_folder(tmp: Path, corpus: Path, files: dict[str, str | bytes | None]) -> Path:
    """A corpus folder with the good corpus's test split and ``files`` (None: a self-looping link)."""
    folder = tmp / "corpus"
    folder.mkdir()
    shutil.copy(corpus / "test.txt", folder / "test.txt")
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.symlink_to(path.name)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def _with_corpus(files: dict[str, str | bytes | None], overrides: list[str] | None = None, keep_test: bool = True):
    def make(tmp: Path, corpus: Path) -> list[str]:
        folder = _corpus_folder(tmp, corpus, files)
        if not keep_test:
            (folder / "test.txt").unlink()
        return ["generation", "0", "--pipeline", str(_pipeline(tmp, folder, overrides)), "--run", str(tmp / "run")]
    return make


def _train_text(corpus: Path) -> str:
    return (corpus / "train.txt").read_text(encoding="utf-8")


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _with_train_text(files: Callable[[Path], dict], overrides: list[str] | None = None, keep_test: bool = True):
    def make(tmp: Path, corpus: Path) -> list[str]:
        return _with_corpus(files(corpus), overrides, keep_test)(tmp, corpus)
    return make


def _data_dir_is_a_file(tmp: Path, corpus: Path) -> list[str]:
    (tmp / "data-file").write_text("not a folder")
    raw = micro_raw_config(corpus)
    raw["data"]["corpus"] = "wikitext-2-raw-v1"
    raw["data"].pop("train_split"), raw["data"].pop("heldout_split")
    return ["generation", "0", "--pipeline", str(write_pipeline(tmp / "p.yaml", raw)), "--run", str(tmp / "run")]


REFUSED = [
    # A pipeline's name is a folder name under runs/; only RUN chooses another folder.
    Case("name-walks-out", _named("../../../elsewhere"), "name: '../../../elsewhere' is not a name", cwd="a/b/c"),
    Case("name-absolute", _name_override("/tmp/lmcollapse-elsewhere"), "name: '/tmp/lmcollapse-elsewhere' is not a name",
         cwd="here"),
    Case("name-parent", _name_override(".."), "name: '..' is not a name", cwd="here"),
    Case("name-dot", _name_override("."), "name: '.' is not a name", cwd="here"),
    Case("name-empty", _name_override(""), "name: '' is not a name", cwd="here"),
    Case("name-with-a-slash", _name_override("a/b"), "use letters, digits, '-', '_' and '.'", cwd="here"),
    # Model folders: code of their own, and pickles.
    Case("model-with-its-own-code", _custom_code_model,
         "ships its own Python code (configuration_hostile.py, modeling_hostile.py; model_type 'hostile-model' is not "
         "one transformers knows), and lmcollapse runs no code from a model unless asked: read that code, then set "
         "model.trust_remote_code=true"),
    Case("model-with-its-own-code-planned", _custom_code_model_planned, "ships its own Python code"),
    Case("model-weights-pickled", _pickled_model,
         "holds its weights in pickle format (pytorch_model.bin), which cannot be loaded safely (unpickling can run "
         "code): convert them to safetensors where you trust the file: "),
    # Corpora: ambiguous splits, looping links, rows that cannot be carved, records that are not text.
    Case("two-formats-for-one-split", _with_train_text(lambda c: {"train.txt": _train_text(c),
                                                                  "train.jsonl": _jsonl([{"text": "a b c"}])}),
         "has 2 candidates for split 'train' (train.txt, train.jsonl): keep one of them"),
    Case("a-file-beside-a-split-folder", _with_train_text(lambda c: {"train.txt": _train_text(c),
                                                                     "train/part-1.txt": _train_text(c)}),
         "has 2 candidates for split 'train' (train/, train.txt)"),
    Case("two-formats-inside-a-split-folder", _with_train_text(lambda c: {"train/a.txt": _train_text(c),
                                                                          "train/b.jsonl": _jsonl([{"text": "x"}])}),
         "split 'train' mixes file formats (json, text in "),
    Case("a-looping-link", _with_corpus({"train.txt": None}), "train.txt is a broken or looping symbolic link"),
    Case("a-looping-link-in-a-split-folder", _with_corpus({"train/a.txt": None}), "a.txt is a broken or looping symbolic link"),
    Case("one-row-carved", _with_train_text(lambda c: {"train.txt": _train_text(c).replace("\n", " ")},
                                            ["data.carve_fraction=0.01"], keep_test=False),
         "the train split of {corpus} has 1 row(s) (lines), and carving 1 split(s) from it needs at least 2: carving "
         "splits rows, never the text inside one, so give the corpus a held-out file of its own"),
    Case("records-that-are-not-text", _with_train_text(lambda c: {"train.jsonl": _jsonl([{"text": "words"}, {"text": {"a": 1}}])}),
         "column 'text' of corpus {corpus}/train.jsonl is not text; record 2 holds dict {{'a': 1}}: set data.text_column"),
    Case("data-dir-is-a-file", _data_dir_is_a_file, "LMCOLLAPSE_DATA_DIR={tmp}/data-file is a file, not a folder",
         env={"LMCOLLAPSE_DATA_DIR": "{tmp}/data-file"}),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.name)
def test_a_hostile_input_is_refused_in_one_line_and_leaves_nothing(case, tmp_path, small_corpus, capsys, monkeypatch):
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    argv = case.make(tmp_path, small_corpus)
    if case.cwd:
        (tmp_path / case.cwd).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / case.cwd)
    message = case.message.format(tmp=tmp_path, corpus=tmp_path / "corpus")
    refused(capsys, ["-q", *argv, "--no-progress"] if "--dry-run" not in argv else ["-q", *argv], tmp_path, message)
    assert not (tmp_path / "RAN").exists(), "code from the model folder ran"
    assert not Path("/tmp/lmcollapse-elsewhere").exists()


def test_a_name_is_a_name_and_a_file_name_becomes_one(tmp_path):
    with pytest.raises(ConfigError, match=r"^name: '\.\./x' is not a name: .* e\.g\. name=x; to write the run elsewhere"):
        micro_config(tmp_path, ["name=../x"])
    pipeline = write_pipeline(tmp_path / "my pipeline (v2).yaml", {"generations": 1})
    assert load_config(pipeline).name == "my-pipeline-v2"  # runs/my-pipeline-v2, never a path


def test_trusting_a_model_runs_its_code_only_when_asked(tmp_path, small_corpus, capsys):
    """The opt-in is honoured (not accepted and ignored): with it the model's own code runs."""
    argv = _custom_code_model(tmp_path, small_corpus)
    code = main([*argv, "--set", "model.trust_remote_code=true", "--no-progress"])
    assert (tmp_path / "RAN").exists()  # the model's code ran because it was asked to
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lmcollapse: error: model ") and "could not be loaded" in err[-1]
    assert not (tmp_path / "run").exists()


def test_the_conversion_command_for_pickled_weights_works_when_pasted(tmp_path, small_corpus, capsys):
    import torch

    from lmcollapse.engine.modeling import train_bpe_tokenizer

    folder = tmp_path / "pickled"
    tokenizer = train_bpe_tokenizer((small_corpus / "train.txt").read_text().splitlines(), 300)
    model = micro_opt(vocab_size=len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    pipeline = _pipeline(tmp_path, small_corpus, name=str(folder))
    message = refused(capsys, ["run", "--dry-run", "--pipeline", str(pipeline)], tmp_path, "pickle format")
    command = re.search(r"where you trust the file: (.*), then set model\.name=(.*)$", message)
    subprocess.run(command.group(1), shell=True, check=True, capture_output=True)
    converted = Path(command.group(2))
    assert (converted / "model.safetensors").is_file() and not (converted / "pytorch_model.bin").exists()
    assert main(["-q", "run", "--dry-run", "--pipeline", str(pipeline), "--set", f"model.name={converted}"]) == 0
    from lmcollapse.engine.modeling import load_model

    loaded, _ = load_model(converted)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_description_with_spaces_can_be_written(tmp_path, small_corpus):
    pipeline = _pipeline(tmp_path, small_corpus)
    assert load_config(pipeline, ["description=a b c", "seed=3"]).description == "a b c"
    assert load_config(pipeline, ["description=a", "b", "seed=3"]).description == "a b"  # make's SET="description=a b"
    assert load_config(pipeline, ['description="x = y"']).description == "x = y"


def test_a_build_far_beyond_the_pipeline_says_what_it_costs_before_it_starts(tmp_path, small_corpus, caplog):
    from lmcollapse.cli import warn_if_large

    config = micro_config(small_corpus)
    with caplog.at_level(logging.WARNING, logger="lmcollapse"):
        warn_if_large(config, RunDir(tmp_path / "run"), config.generations)  # one more: small, no word
        assert not caplog.records
        warn_if_large(config, RunDir(tmp_path / "run"), 999_999)  # the micro pipeline's generations take a second
    (record,) = caplog.records
    assert re.match(r"generation 999999 is beyond the 2 generation\(s\) this pipeline builds: ~[\d.]+ (s|min|h) and ~\d+ GB of "
                    r"disk on this machine by the cost model", record.getMessage()), record.getMessage()
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- inputs against a built run

@pytest.fixture(scope="module")
def built_run(tmp_path_factory, small_corpus):
    folder = tmp_path_factory.mktemp("hostile-run")
    pipeline = write_pipeline(folder / "micro.yaml", micro_raw_config(small_corpus, ["train.epochs=1"]))
    run = folder / "run"
    assert main(["-q", "generation", "1", "--pipeline", str(pipeline), "--run", str(run), "--no-progress"]) == 0
    return pipeline, run


def _a_file(tmp: Path) -> Path:
    (tmp / "FILE").write_text("a file")
    return tmp / "FILE"


REFUSED_ON_A_RUN = [
    ("export-under-a-file", lambda run, tmp: ["export", "--run", str(run), "--to", str(_a_file(tmp) / "sub")],
     "--to {tmp}/FILE/sub is inside {tmp}/FILE, which is a file, not a folder: choose a folder"),
    ("report-into-a-file", lambda run, tmp: ["report", "--run", str(run), "--out", str(_a_file(tmp))],
     "--out {tmp}/FILE is a file, not a folder: choose a folder, e.g. --out report-copy"),
    ("report-under-a-file", lambda run, tmp: ["report", "--run", str(run), "--out", str(_a_file(tmp) / "sub")],
     "--out {tmp}/FILE/sub is inside {tmp}/FILE, which is a file"),
]


@pytest.mark.parametrize("name, make, message", REFUSED_ON_A_RUN, ids=[case[0] for case in REFUSED_ON_A_RUN])
def test_a_hostile_path_against_a_run_is_refused_in_one_line(built_run, tmp_path, capsys, name, make, message):
    _, run = built_run
    argv = make(run, tmp_path)
    before = snapshot(run)
    refused(capsys, argv, tmp_path, message.format(tmp=tmp_path))
    assert snapshot(run) == before


def test_accepting_an_unreadable_file_is_refused_before_anything_is_trained(built_run, tmp_path, capsys):
    pipeline, original = built_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(original, run.root)
    heldout = run.human_heldout
    heldout.write_bytes(heldout.read_bytes()[:300])  # truncated: no longer Parquet
    rebuild = f"rm -r {run.human} && make generation-1 PIPELINE={run.pipeline_file} RUN={run.root}"
    plain = refused(capsys, ["generation", "2", "--run", str(run.root), "--no-progress"], tmp_path,
                    f"{heldout} changed and cannot be read (")
    assert plain.endswith(f"since the human-data stage completed: restore it, or rebuild it with `{rebuild}`") or \
        plain.endswith(f"since human completed: restore it, or rebuild it with `{rebuild}`"), plain
    assert "--accept-changed" not in plain and "ACCEPT_CHANGED" not in plain  # offered only where it can work
    accepted = refused(capsys, ["generation", "2", "--run", str(run.root), "--no-progress", "--accept-changed"],
                       tmp_path, f"{heldout} changed and cannot be read (")
    assert "--accept-changed" not in accepted and "ACCEPT_CHANGED" not in accepted
    assert not run.generation(2).root.exists()


def test_status_after_damage_proposes_the_mend_first(built_run, tmp_path):
    from lmcollapse.views.status import describe_status

    _, original = built_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(original, run.root)
    weights = run.generation(0).model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    text, healthy = describe_status(run)
    assert not healthy
    (next_line,) = [line for line in text.splitlines() if line.startswith("next: ")]
    assert next_line == (f"next: mend generation-00 first (building stops on it): restore the file named above, or "
                         f"rebuild it: rm -r {run.generation(0).root} && make generation-1 "
                         f"PIPELINE={run.pipeline_file} RUN={run.root}")
