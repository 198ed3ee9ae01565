"""Experiment tracking through accelerate's trackers: TensorBoard, offline, read back with
TensorBoard's own reader, holds exactly what train_log.json and metrics.csv hold, once each,
also when the run was built in two commands."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import build_quietly, micro_config
from lmcollapse.config import build_config
from lmcollapse.errors import ConfigError, LmcollapseError
from lmcollapse.report import write_report
from lmcollapse.run.layout import RunDir

pytest.importorskip("tensorboard", reason="track.with=[tensorboard] needs tensorboard (make install installs it)")


def events(run: RunDir):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer(size_guidance={"scalars": 0, "images": 0})
    multiplexer.AddRunsFromDirectory(str(run.root / "tracking"))
    multiplexer.Reload()
    scalars, images = {}, set()
    for name in multiplexer.Runs():
        accumulator = multiplexer.GetAccumulator(name)
        tags = accumulator.Tags()
        for tag in tags.get("scalars", []):
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
        images.update(tags.get("images", []))
    return {tag: sorted(values) for tag, values in scalars.items()}, images


@pytest.mark.slow
def test_tensorboard_holds_the_training_curves_and_metrics_once(tmp_path, small_corpus):
    config = micro_config(small_corpus, ["track.with=[tensorboard]"])
    assert config.track.log_with == ("tensorboard",)
    root = tmp_path / "run"
    build_quietly(config, root, 0)
    build_quietly(config, root, 1)  # a second command: generation 0 not logged again
    run = RunDir(root)
    scalars, _ = events(run)
    for index in (0, 1):
        log = json.loads(run.generation(index).train_log.read_text())["log"]
        for key in ("loss", "lr"):  # TensorBoard stores float32
            steps, values = zip(*scalars[f"train/gen-{index:02d}/{key}"])
            assert list(steps) == [h["step"] for h in log]
            assert list(values) == pytest.approx([h[key] for h in log], rel=1e-6)
    with open(run.metrics_csv, newline="", encoding="utf-8") as handle:
        rows = {row["generation"]: row for row in csv.DictReader(handle)}
    for column in ("ppl_blocks", "ppl_sliding", "self_bleu_4", "distinct_2", "train_loss"):
        steps, values = zip(*scalars[f"metrics/{column}"])
        assert list(steps) == [0, 1]
        assert list(values) == pytest.approx([float(rows["0"][column]), float(rows["1"][column])], rel=1e-4)
    assert [step for step, _ in scalars["train/tokens_per_second"]] == [0, 1]
    write_report(root)
    _, images = events(run)
    assert "figures/perplexity" in images


def test_unknown_or_missing_trackers_are_one_line_errors(tmp_path, small_corpus, monkeypatch):
    with pytest.raises(ConfigError, match=r"track.log_with: unknown tracker 'tensorbored': use any of tensorboard, wandb"):
        build_config({"track": {"with": ["tensorbored"]}})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    config = micro_config(small_corpus, ["track.with=[wandb]"])
    with pytest.raises(LmcollapseError, match=r"track.with: wandb needs the wandb package: pip install wandb, or remove"):
        build_quietly(config, tmp_path / "run", 0)
    assert not (tmp_path / "run").exists()


class Recorder:
    """A stand-in for a hosted tracker (wandb), recording what it is given; ``fail`` makes it
    raise when started, as wandb does without a login."""

    name, requires_logging_directory, fail = "wandb", False, False
    logged: list = []

    def __init__(self, run_name, **kwargs):
        self.run_name = run_name

    def start(self):
        if Recorder.fail:
            raise RuntimeError("not logged in")

    def store_init_configuration(self, values):
        Recorder.logged.append(("config", None, values))

    def log(self, values, step=None, **kwargs):
        Recorder.logged.append(("log", step, values))

    def log_images(self, values, step=None, **kwargs):
        assert not kwargs  # dataformats is TensorBoard's alone
        Recorder.logged.append(("images", step, sorted(values)))

    def finish(self):
        pass


@pytest.fixture
def recorder(monkeypatch):
    import accelerate.tracking

    from lmcollapse.stages import tracking

    Recorder.logged, Recorder.fail = [], False
    monkeypatch.setitem(accelerate.tracking.LOGGER_TYPE_TO_CLASS, "wandb", Recorder)
    monkeypatch.setattr(tracking, "check_tracker", lambda name: None)  # wandb itself is not installed here
    return Recorder


@pytest.mark.slow
def test_a_one_axis_tracker_gets_growing_steps_and_the_figures_once(tmp_path, small_corpus, recorder):
    config = micro_config(small_corpus, ["track.with=[wandb]"])
    root = tmp_path / "run"
    build_quietly(config, root, 1)
    steps = [step for kind, step, _ in recorder.logged if kind == "log"]
    assert steps == sorted(steps) and steps[0] == 1  # wandb drops a step lower than the last
    curve = [step for kind, step, values in recorder.logged if kind == "log" and "train/gen-01/loss" in values]
    assert curve[0] > max(step for kind, step, values in recorder.logged if kind == "log" and "train/gen-00/loss" in values)
    metrics = [values for kind, _, values in recorder.logged if kind == "log" and "metrics/ppl_blocks" in values]
    assert [m["generation"] for m in metrics] == [0, 1]
    build_quietly(config, root, 1)  # nothing to build: nothing logged, no config
    assert sum(kind == "config" for kind, _, _ in recorder.logged) == 1
    write_report(root)
    write_report(root)  # the same figures: logged once
    assert [names for kind, _, names in recorder.logged if kind == "images"] == [
        ["figures/diversity", "figures/perplexity", "figures/tails", "figures/training_loss"]]


@pytest.mark.slow
def test_a_tracker_that_fails_does_not_stop_the_run(tmp_path, small_corpus, recorder, caplog):
    recorder.fail = True
    config = micro_config(small_corpus, ["track.with=[wandb]"])
    build_quietly(config, tmp_path / "run", 0)
    assert RunDir(tmp_path / "run").generation(0).is_complete
    assert "tracking to wandb is off for this command (not logged in): the run goes on without it" in caplog.text


def test_track_with_and_log_with_are_one_setting():
    with pytest.raises(ConfigError, match=r"track.with and track.log_with are one setting: keep one of them"):
        build_config({"track": {"with": ["wandb"], "log_with": ["tensorboard"]}})
    with pytest.raises(ConfigError, match=r"expected a list, got 'tensorboard': write it in brackets"):
        build_config({"track": {"with": "tensorboard"}})
