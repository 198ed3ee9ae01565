"""Experiment tracking through accelerate's trackers: TensorBoard, offline, read back with
TensorBoard's own reader, holds exactly what train_log.json and metrics.csv hold, once each,
also when the run was built in two commands."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import micro_config
from lmcollapse.config import build_config
from lmcollapse.errors import ConfigError, LmcollapseError
from lmcollapse.pipeline import build
from lmcollapse.report import write_report
from lmcollapse.rundir import RunDir

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
    build(config, root, 0, progress=False, echo=lambda _: None)
    build(config, root, 1, progress=False, echo=lambda _: None)  # a second command: generation 0 not logged again
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
        build(config, tmp_path / "run", 0, progress=False, echo=lambda _: None)
    assert not (tmp_path / "run").exists()
