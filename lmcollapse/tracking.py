"""Experiment tracking through accelerate's trackers (``track.with: [tensorboard, wandb, ...]``).

What a run logs is read from the files its stages wrote, when a generation completes, not from
inside the training loop: so a generation trained across an interruption logs exactly the curve
an uninterrupted one would (its ``train_log.json``), and a generation that was already complete
is not logged again. Per generation ``k``:

* ``train/gen-kk/loss`` and ``train/gen-kk/lr`` at every optimizer step (step = optimizer step);
* ``train/tokens_per_second`` and every metric of its metrics row as ``metrics/<column>``
  (step = k), the values of ``metrics.csv``;

at the start, the resolved config as hyperparameters; and, by ``lmcollapse report``, the report's
figures (``figures/<name>``). Only the main process logs (accelerate's trackers are main-process
objects). TensorBoard writes under ``<run>/tracking/<run name>/``, readable offline.

    tracker = RunTracker.open(config, run, accelerator)   # None without track.with
    tracker.log_generation(index, train_log, row)
    tracker.finish()
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from lmcollapse.config import PipelineConfig, config_to_dict, flatten
from lmcollapse.config.stage_sections import TRACKER_PACKAGES
from lmcollapse.errors import LmcollapseError
from lmcollapse.rundir import RunDir

TRACKING_DIR = "tracking"


def check_trackers(config: PipelineConfig) -> None:
    """Each tracker's package is installed (before any work starts)."""
    for name in config.track.log_with:
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            fix = "run `make install`, or " if name == "tensorboard" else ""
            raise LmcollapseError(f"track.with: {name} needs the {package} package: {fix}pip install {package}, "
                                  f"or remove {name} from track.with")


class RunTracker:
    """accelerate's trackers for one run, opened on the main process."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    @classmethod
    def open(cls, config: PipelineConfig, run: RunDir, main: bool = True) -> RunTracker | None:
        """The run's trackers (None without ``track.with``, or on a process other than the main one)."""
        if not config.track.log_with or not main:
            return None
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        check_trackers(config)
        trackers = []
        for name in config.track.log_with:
            tracker_class = LOGGER_TYPE_TO_CLASS[name]
            options = {"logging_dir": str(run.root / TRACKING_DIR)} if tracker_class.requires_logging_directory else {}
            tracker = tracker_class(run.name, **options)
            if hasattr(tracker, "start"):  # accelerate >= 1.2 starts trackers explicitly
                tracker.start()
            tracker.store_init_configuration(hyperparameters(config))
            trackers.append(tracker)
        return cls(trackers)

    def log(self, values: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_generation(self, index: int, train_log: dict, row: dict) -> None:
        """A completed generation: its training curve, then its metrics (step = generation)."""
        for entry in train_log.get("log", []):
            self.log({f"train/gen-{index:02d}/loss": entry["loss"], f"train/gen-{index:02d}/lr": entry["lr"]},
                     step=int(entry["step"]))
        values = {f"metrics/{key}": float(value) for key, value in row.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "generation"
                  and not (isinstance(value, float) and math.isnan(value))}
        if train_log.get("seconds"):
            values["train/tokens_per_second"] = train_log["tokens"] / train_log["seconds"]
        self.log(values, step=index)

    def log_figures(self, figures: list[Path]) -> None:
        """The report's figures (PNG), each under ``figures/<name>``."""
        import numpy as np
        from PIL import Image

        for tracker in self.trackers:
            if not hasattr(tracker, "log_images"):
                continue
            for figure in figures:
                image = np.asarray(Image.open(figure).convert("RGB"))
                tracker.log_images({f"figures/{figure.stem}": image[None]}, step=0, dataformats="NHWC")

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def hyperparameters(config: PipelineConfig) -> dict:
    """The resolved config as flat scalars (trackers take bool, int, float and str values)."""
    flat = flatten(config_to_dict(config))
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in flat.items()}
