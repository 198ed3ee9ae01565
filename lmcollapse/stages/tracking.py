"""Experiment tracking through accelerate's trackers (``track.with: [tensorboard, wandb, ...]``).

What a run logs is read from the files its stages wrote, when a generation completes, not from
inside the training loop: so a generation trained across an interruption logs exactly the curve
an uninterrupted one would (its ``train_log.json``), and a generation that was already complete
is not logged again. Per generation ``k``:

* ``train/gen-kk/loss`` and ``train/gen-kk/lr`` at every optimizer step (step = optimizer step);
* ``train/tokens_per_second`` and every metric of its metrics row as ``metrics/<column>``
  (step = k), the values of ``metrics.csv``;

(trackers with one growing step axis, wandb among them, get the optimizer steps counted over all
generations instead, the metrics at the generation's last step with ``generation`` as a value);

at the start, the resolved config as hyperparameters; and, by ``lmcollapse report``, the report's
figures (``figures/<name>``, once per change of the figures). Only the main process logs. A tracker
that fails (no login, no network, no package) is left out with a warning: tracking never stops a
run. TensorBoard (and aim, MLflow) write under ``<run>/tracking/``, readable offline.

    tracker = RunTracker.open(config, run, accelerator)   # None without track.with
    tracker.log_generation(index, train_log, row)
    tracker.finish()
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

from lmcollapse.config import PipelineConfig, config_to_dict, flatten
from lmcollapse.config.stage_sections import TRACKER_PACKAGES
from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.layout import RunDir

TRACKING_DIR = "tracking"
log = logging.getLogger(__name__)


def check_trackers(config: PipelineConfig) -> None:
    """Each tracker's package is installed (before any work starts)."""
    for name in config.track.log_with:
        check_tracker(name)


def check_tracker(name: str) -> None:
    """The tracker's package is installed, or a one-line error naming it."""
    package = TRACKER_PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        fix = "run `make install`, or " if name == "tensorboard" else ""
        raise LmcollapseError(f"track.with: {name} needs the {package} package: {fix}pip install {package}, "
                              f"or remove {name} from track.with")


# Trackers whose runs have one step axis that may only grow (wandb drops a step lower than one
# already logged): they get one global step, the optimizer steps counted over the generations,
# with the generation logged as a value; the others keep a step axis per curve.
GLOBAL_STEP_TRACKERS = frozenset({"wandb", "trackio", "swanlab", "comet_ml"})


class RunTracker:
    """accelerate's trackers for one run, opened on the main process. A tracker that fails (no
    login, no network) is dropped with a warning: tracking never stops or loses a run."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    @classmethod
    def open(cls, config: PipelineConfig, run: RunDir, main: bool = True) -> RunTracker | None:
        """The run's trackers (None without ``track.with``, or on a process other than the main one)."""
        if not config.track.log_with or not main:
            return None
        import inspect

        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        trackers = []
        for name in config.track.log_with:
            tracker_class = LOGGER_TYPE_TO_CLASS[name]
            options = {}
            if "logging_dir" in inspect.signature(tracker_class.__init__).parameters:  # tensorboard, aim, mlflow
                options["logging_dir"] = str(run.root / TRACKING_DIR)
            try:
                check_tracker(name)
                tracker = tracker_class(run.name, **options)
                if hasattr(tracker, "start"):  # accelerate >= 1.2 starts trackers explicitly
                    tracker.start()
                tracker.store_init_configuration(hyperparameters(config))
            except Exception as err:  # noqa: BLE001 - any tracker's failure: said, and the run goes on
                log.warning("tracking to %s is off for this command (%s): the run goes on without it", name,
                            error_reason(err))
                continue
            trackers.append((name, tracker))
        return cls(trackers) if trackers else None

    def _each(self, action) -> None:
        for name, tracker in list(self.trackers):
            try:
                action(name, tracker)
            except Exception as err:  # noqa: BLE001
                log.warning("tracking to %s stopped (%s): the run goes on without it", name,
                            error_reason(err))
                self.trackers.remove((name, tracker))

    def log_generation(self, index: int, train_log: dict, row: dict, steps_before: int) -> None:
        """A completed generation: its training curve, then its metrics. ``steps_before``: the
        optimizer steps of the generations before it (the global step of trackers that need one)."""
        curve = [({f"train/gen-{index:02d}/loss": entry["loss"], f"train/gen-{index:02d}/lr": entry["lr"]},
                  int(entry["step"])) for entry in train_log.get("log", [])]
        values = {f"metrics/{key}": float(value) for key, value in row.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "generation"
                  and not (isinstance(value, float) and math.isnan(value))}
        if train_log.get("seconds"):
            values["train/tokens_per_second"] = train_log["tokens"] / train_log["seconds"]
        last = steps_before + max([step for _, step in curve], default=0)

        def log_to(name, tracker):
            for point, step in curve:
                tracker.log(point, step=steps_before + step if name in GLOBAL_STEP_TRACKERS else step)
            if name in GLOBAL_STEP_TRACKERS:
                tracker.log({**values, "generation": index}, step=last)
            else:
                tracker.log(values, step=index)

        self._each(log_to)

    def log_figures(self, figures: list[Path]) -> None:
        """The report's figures (PNG), each under ``figures/<name>``."""
        import numpy as np
        from PIL import Image

        images = {f"figures/{figure.stem}": np.asarray(Image.open(figure).convert("RGB"))[None] for figure in figures}

        def log_to(name, tracker):
            if not hasattr(tracker, "log_images"):
                return
            if name == "tensorboard":
                tracker.log_images(images, step=0, dataformats="NHWC")
            else:
                tracker.log_images(images, step=0)

        self._each(log_to)

    def finish(self) -> None:
        self._each(lambda name, tracker: tracker.finish())


def log_report_figures(config: PipelineConfig, run: RunDir, figures: list[Path]) -> None:
    """The report's figures to the run's trackers: only for the run's own report folder, on a
    writable run, and only when the figures changed since they were last logged (a marker in
    ``tracking/`` holds their sha256), so writing the same report twice logs nothing twice."""
    import os

    from lmcollapse.run.atomic import sha256_bytes, write_text_atomic

    if not config.track.log_with or not figures or not os.access(run.root, os.W_OK):
        return
    digest = sha256_bytes(b"".join(figure.read_bytes() for figure in figures))
    marker = run.root / TRACKING_DIR / "figures.sha256"
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == digest:
        return
    tracker = RunTracker.open(config, run)
    if tracker is None:
        return
    tracker.log_figures(figures)
    tracker.finish()
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, digest + "\n")


def hyperparameters(config: PipelineConfig) -> dict:
    """The resolved config as flat scalars (trackers take bool, int, float and str values)."""
    flat = flatten(config_to_dict(config))
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in flat.items()}
