"""The run directory: every file name of a run, in one place, and the one-writer lock.

    runs/<run>/
      pipeline.yaml           the resolved config, exactly as used
      .lock                   held (flock) by the one process writing the run
      base/model/             the starting weights and tokenizer; base/manifest.json
      base/eval.json          zero-shot perplexity of the base model
      human/                  train.parquet, heldout.parquet, validation.parquet (token blocks with
                              provenance), manifest.json (sizes, sha256, human-corpus text metrics),
                              README.md (its dataset card: load_dataset("human") loads it)
      human/mauve.json        MAUVE of human text against itself (evaluate.mauve), and beside it
                              mauve-heldout-features.npy, the held-out side every generation reuses
      generation-00/
        lineage.json          written first: the manifests it is built on (checked on resume)
        train-set.parquet     exactly what this generation trains on
        decontamination.json  the detector's report, when decontaminate.enabled
        checkpoints/          step-000200/ ... while training (removed once model/ exists)
        model/                the trained model (from_pretrained-loadable), train_log.json, README.md
        synthetic/            shard-00000.parquet + shard-00000.json, generation_config.json,
                              README.md (the dataset card: load_dataset(<this folder>) loads it)
        eval/                 perplexity.json, heldout_block_nll.npy, text_metrics.json,
                              tails.json, tails.npy, mauve.json, watermark.json
        manifest.json         written last, atomically: the generation is complete iff it exists
      family-01/ ...          with model.chain: each further model family's base/ and human/, laid out
                              as the run's own (base/ and human/ are chain[0]'s)
      metrics.csv, metrics.json
      stale/                  stages moved aside because what they were built on changed
      report/                 make report's tables and figures
      tracking/               TensorBoard event files (track.with: [tensorboard])

A stage is complete when its marker file exists; markers are written last and atomically, so
a half-written folder is never mistaken for a done one. This module names the paths and nothing
else: manifests are in ``manifests.py``, the lock in ``lock.py``, the commands that rebuild a run
in ``commands.py``, checkpoints in ``engine/checkpointer.py`` and shards in ``engine/shards.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"


def child(*parts: str, doc: str | None = None) -> property:
    """A path below the object's ``root``: ``train_set = child("train-set.parquet")``."""
    return property(lambda self: self.root.joinpath(*parts), doc=doc)


@dataclass(frozen=True)
class GenerationDir:
    root: Path
    index: int

    train_set = child("train-set.parquet")
    checkpoints = child("checkpoints")
    model = child("model")
    train_log = child("model", "train_log.json")
    synthetic = child("synthetic")
    eval = child("eval")
    manifest = child(MANIFEST)
    lineage = child("lineage.json", doc="What the generation was started on (the sha256 of its parent's and the "
                    "base's manifests), written before its first file: a partial generation is checked against it on resume.")
    decontamination = child("decontamination.json", doc="The detector's report, written before the training set it "
                            "filtered (decontaminate.enabled).")
    perplexity = child("eval", "perplexity.json")
    heldout_block_nll = child("eval", "heldout_block_nll.npy")
    text_metrics = child("eval", "text_metrics.json")
    tails = child("eval", "tails.json", doc="The tail quantiles; ``tails_values`` holds every sample's perplexity "
                  "under generation 0's model.")
    tails_values = child("eval", "tails.npy")
    mauve = child("eval", "mauve.json")
    watermark = child("eval", "watermark.json", doc="With generate.watermark: what the bias cost the corpus, and how much of it is detected.")

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def is_complete(self) -> bool:
        return self.manifest.is_file()

    def synthetic_shards(self) -> list[Path]:
        return sorted(self.synthetic.glob("shard-*.parquet"))

    def synthetic_sidecars(self) -> list[Path]:
        return sorted(self.synthetic.glob("shard-*.json"))


def family_position(name: str) -> int | None:
    """The chain position a family folder's name stands for ("family-01": 1); None for any other
    name. The one parser of the names ``RunDir.family`` writes."""
    digits = name.removeprefix("family-")
    return int(digits) if digits != name and digits.isascii() and digits.isdigit() else None


@dataclass(frozen=True)
class RunDir:
    root: Path

    pipeline_file = child("pipeline.yaml")
    lock_file = child(".lock")
    base = child("base")
    base_model = child("base", "model")
    base_manifest = child("base", MANIFEST)
    base_eval = child("base", "eval.json", doc="The base model's zero-shot held-out perplexity (protected like a manifest).")
    human = child("human")
    human_manifest = child("human", MANIFEST)
    human_train = child("human", "train.parquet")
    human_heldout = child("human", "heldout.parquet")
    human_validation = child("human", "validation.parquet", doc="Validation blocks (train.select=best-validation only).")
    human_mauve = child("human", "mauve.json", doc="MAUVE of the human fine-tuning blocks against the held-out blocks "
                        "(evaluate.mauve; protected like a manifest).")
    human_mauve_features = child("human", "mauve-heldout-features.npy",
                                 doc="The held-out side's MAUVE features, computed once for every generation.")
    stale = child("stale", doc="Where stages built on a lineage that no longer exists are moved (never deleted).")
    metrics_csv = child("metrics.csv")
    metrics_json = child("metrics.json")
    report = child("report")

    @property
    def name(self) -> str:
        return self.root.name

    def family(self, position: int) -> RunDir:
        """The folder of model family ``position`` of a chain (an index of ``model.entries``): its
        base/ and human/ named as the run's own. Position 0 is the run itself."""
        return self if position == 0 else RunDir(self.root / f"family-{position:02d}")

    def families_on_disk(self) -> list[RunDir]:
        """The further families' folders (family-01, ...) that exist, in order."""
        found = [(position, path) for path in self.root.glob("family-*")
                 if path.is_dir() and (position := family_position(path.name))]
        return [RunDir(path) for _, path in sorted(found)]

    def generation(self, index: int) -> GenerationDir:
        return GenerationDir(self.root / f"generation-{index:02d}", index)

    def generations_on_disk(self) -> list[GenerationDir]:
        found = []
        for path in sorted(self.root.glob("generation-*")):
            suffix = path.name.removeprefix("generation-")
            if path.is_dir() and suffix.isdigit():
                found.append(GenerationDir(path, int(suffix)))
        return sorted(found, key=lambda g: g.index)

    def complete_generations(self) -> list[GenerationDir]:
        return [g for g in self.generations_on_disk() if g.is_complete]


def enclosing_run(path: Path) -> RunDir | None:
    """The run ``path`` is, or lies inside (the nearest folder above it with a pipeline.yaml), or None."""
    for folder in (Path(path).resolve(), *Path(path).resolve().parents):
        if RunDir(folder).pipeline_file.is_file():
            return RunDir(folder)
    return None


def refuse_inside_run(path: Path, what: str, example: str, allowed: str | None = None) -> None:
    """Refuse, in one line, to write ``path`` where it would land among a run's own files (its
    tables, a finished stage): only the run's ``allowed`` subfolder (its report/) may hold it."""
    run = enclosing_run(path)
    if run is None:
        return
    target = Path(path).resolve()
    if allowed is not None and (target == run.root / allowed or run.root / allowed in target.parents):
        return
    from lmcollapse.errors import LmcollapseError

    raise LmcollapseError(f"{what} {path} lies inside run {run.root}: writing there would mix with the run's own files "
                          f"(its metrics, its stages); choose a folder outside it, e.g. {example}")
