"""A study file: the pipelines it varies, the seeds, a grid of config keys crossed with them,
named variants, the reference variant, and what one run needs. Read safely (YAML, no code), every
key checked, then expanded into ordinary runs, one folder per variant and seed.

    study = load_study(Path("studies/regimes.yaml"))
    for run in study.runs():          # StudyRun: variant, seed, folder, the command that builds it
        print(run.folder, run.argv())

Every run is an ordinary run: ``make generation-N``, ``status``, ``report`` and ``export`` work on
its folder unchanged. Its folder is ``<root>/<variant>/seed-<k>``, the variant's name derived from
its pipeline and grid values (``tiny``, ``tiny--generate.temperature-0.7``) or given.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmcollapse.config import PipelineConfig, check_name, load_config, safe_name
from lmcollapse.config.loading import build_config_section, read_yaml_mapping
from lmcollapse.config.shipped import resolve_pipeline
from lmcollapse.config.stage_sections import MAX_SEED
from lmcollapse.errors import ConfigError
from lmcollapse.metrics import REGISTRY


@dataclass(frozen=True)
class Resources:
    """What one run of the study needs; the local launcher divides the machine by it, the SLURM
    launcher asks sbatch for it."""

    gpus: int = 0
    """GPUs per run (each GPU is a slot of the local launcher; several make a multi-GPU run)."""
    cpus: int = 1
    """CPU cores per run: its threads (OMP_NUM_THREADS) on a CPU, its --cpus-per-task on SLURM.
    A run's numbers depend on its thread count on a CPU, so it is set explicitly and recorded."""
    memory_gb: float = 4.0
    """Memory per run, GB (sbatch --mem; the local launcher starts no more runs at once than the
    machine's memory holds)."""
    time_minutes: int = 60
    """Wall time per job, minutes (sbatch --time; SLURM only); a job that reaches it is requeued and resumes."""
    processes: int = 1
    """Processes per run (accelerate launch); more than one needs as many GPUs, or runs gloo on a CPU."""

    def __post_init__(self) -> None:
        for key in ("gpus", "cpus", "time_minutes", "processes"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < (0 if key == "gpus" else 1):
                raise ConfigError(f"resources.{key}: must be a whole number of at least {0 if key == 'gpus' else 1}, "
                                  f"got {getattr(self, key)!r}")
        if self.memory_gb <= 0:
            raise ConfigError(f"resources.memory_gb: must be positive, got {self.memory_gb}")
        if self.gpus and self.processes > self.gpus:
            raise ConfigError(f"resources.processes: {self.processes} processes need as many GPUs, but "
                              f"resources.gpus is {self.gpus}: set resources.gpus={self.processes}")


@dataclass(frozen=True)
class SlurmOptions:
    """Passed through to sbatch."""

    partition: str | None = None
    """sbatch --partition."""
    account: str | None = None
    """sbatch --account."""
    qos: str | None = None
    """sbatch --qos."""
    constraint: str | None = None
    """sbatch --constraint."""
    array_parallelism: int = 64
    """At most this many of the study's jobs run at once (the %N of --array)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other sbatch option by its long name, e.g. {mail-type: END, exclude: node7}; ``true``
    for an option without a value (``hold: true`` is ``--hold``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.array_parallelism, int) or self.array_parallelism < 1:
            raise ConfigError(f"slurm.array_parallelism: must be a whole number of at least 1, got {self.array_parallelism!r}")
        for key in ("partition", "account", "qos", "constraint"):
            _check_sbatch_text(f"slurm.{key}", getattr(self, key))
        for key, value in self.extra.items():
            if not isinstance(key, str) or not SBATCH_OPTION.fullmatch(key):
                raise ConfigError(f"slurm.extra: {key!r} is not an sbatch option's long name (letters, digits, - and _, "
                                  "e.g. mail-type)")
            if key.replace("_", "-") in SBATCH_SET_BY_LAUNCHER:
                raise ConfigError(f"slurm.extra.{key}: the launcher sets --{key.replace('_', '-')} itself (from resources, "
                                  "the study's name and its folder): set it through resources or slurm's own keys")
            if value is False or value is None or isinstance(value, (dict, list, float)):
                raise ConfigError(f"slurm.extra.{key}: expected text, a whole number or true (an option without a "
                                  f"value), got {value!r}")
            _check_sbatch_text(f"slurm.extra.{key}", value)


SBATCH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# What sbatch_parameters and submitit write into the script: an extra option of the same name would
# replace it (the job's log, its array, the signal that requeues it before its time limit).
SBATCH_SET_BY_LAUNCHER = frozenset({
    "job-name", "time", "nodes", "ntasks-per-node", "cpus-per-task", "mem", "gpus-per-node", "signal", "array",
    "output", "error", "open-mode", "dependency", "kill-on-invalid-dep", "partition", "account", "qos", "constraint"})


def _check_sbatch_text(where: str, value: Any) -> None:
    """A value becomes one ``#SBATCH`` line: a line break would end it, and sbatch would run what
    follows as a command (and stop reading the options after it)."""
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{where}: {value!r} holds a line break or another control character: write it on one line")


@dataclass(frozen=True)
class StudyFile:
    """The study file's own keys (``lmcollapse study plan`` prints what they expand to)."""

    name: str
    """The study's name: its runs go to ``runs/<name>/`` unless ``root`` says otherwise."""
    pipelines: tuple[str, ...]
    """The pipelines it varies: shipped names (``tiny``) or paths relative to the study file."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Every variant runs once per seed."""
    generations: int | None = None
    """Generations per run (0 .. generations-1); null: each pipeline's own."""
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Dotted config keys to lists of values, crossed with each other and with the pipelines."""
    variants: dict[str, dict] = field(default_factory=dict)
    """Named variants: {name: {pipeline: <name or path>, set: {dotted key: value}}}, beside the grid's."""
    reference: str | None = None
    """The variant every other is compared with (default: the first)."""
    metrics: tuple[str, ...] = ()
    """The metrics the statistics compare (default: the report's comparison metrics)."""
    description: str = ""
    """What the study shows (free text)."""
    root: str | None = None
    """Where its runs go; null: runs/<name>."""
    launcher: Literal["local", "slurm"] = "local"
    """``local``: several runs at once on this machine; ``slurm``: a job array through submitit."""
    resources: Resources = field(default_factory=Resources)
    """What one run needs."""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """sbatch options for ``launcher: slurm``."""


@dataclass(frozen=True)
class Variant:
    name: str
    pipeline: Path
    overrides: tuple[str, ...]  # dotted key=value, as --set takes them


@dataclass(frozen=True, eq=False)
class StudyRun:
    """One run of a study: an ordinary run in ``folder``, built from its variant's pipeline with the
    variant's overrides, its seed, the variant's name and the study's generations."""

    variant: Variant
    seed: int
    folder: Path
    generations: int | None  # the study's; None: the pipeline's own

    @property
    def name(self) -> str:
        return f"{self.variant.name}/seed-{self.seed}"

    def overrides(self) -> list[str]:
        return [*self.variant.overrides, f"seed={self.seed}", f"name={self.variant.name}",
                *([f"generations={self.generations}"] if self.generations is not None else [])]

    @functools.cached_property
    def config(self) -> PipelineConfig:
        return load_config(self.variant.pipeline, self.overrides())

    @property
    def last_generation(self) -> int:
        return self.config.generations - 1

    def argv(self) -> list[str]:
        """``lmcollapse`` arguments that make the run complete (the same command builds, resumes,
        or finds it complete)."""
        return ["generation", str(self.last_generation), "--pipeline", str(self.variant.pipeline),
                "--run", str(self.folder), "--no-progress", "--set", *self.overrides()]


def lmcollapse_command(argv: list[str], processes: int = 1) -> list[str]:
    """``python -m lmcollapse <argv>``, or under ``accelerate launch`` with ``processes`` processes
    (one per GPU the run is given; gloo on a CPU)."""
    if processes == 1:
        return [sys.executable, "-m", "lmcollapse", *argv]
    # port 0: a free port of its own, chosen at launch; runs started at once on one machine (the local
    # launcher's slots, array tasks sharing a node) would otherwise all meet on 29500
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "lmcollapse", *argv]


@dataclass(frozen=True)
class Study:
    path: Path
    spec: StudyFile
    variants: tuple[Variant, ...]
    root: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def reference(self) -> str:
        return self.spec.reference or self.variants[0].name

    @property
    def state_dir(self) -> Path:
        """The study's own bookkeeping: launches, job ids, logs (beside its runs, never inside one)."""
        return self.root / ".study"

    def runs(self) -> list[StudyRun]:
        return [self.run(variant, seed) for variant in self.variants for seed in self.spec.seeds]

    def run(self, variant: Variant, seed: int) -> StudyRun:
        return StudyRun(variant, seed, self.root / variant.name / f"seed-{seed}", self.spec.generations)


def load_study(path: Path) -> Study:
    """Read and check a study file; every variant's config is built (so a value the config refuses
    stops here, naming the variant), and two variants that resolve to the same runs are refused."""
    path = Path(path)
    raw = read_yaml_mapping(path, "study file")
    raw.setdefault("name", safe_name(path.stem))
    spec = build_config_section(StudyFile, raw, "")
    check_name(spec.name, "name")
    if not spec.pipelines:
        raise ConfigError(f"{path}: pipelines: name at least one pipeline (e.g. pipelines: [tiny])")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds) or min(spec.seeds) < 0 or max(spec.seeds) > MAX_SEED:
        raise ConfigError(f"{path}: seeds: must be distinct whole numbers from 0 to {MAX_SEED}, got {list(spec.seeds)}")
    for key, values in spec.grid.items():
        if not values:
            raise ConfigError(f"{path}: grid.{key}: an empty list gives no runs: give it at least one value, or remove it")
    variants = _variants(path, spec)
    root = Path(spec.root) if spec.root else Path("runs") / spec.name
    study = Study(path, spec, variants, root)
    names = [v.name for v in variants]
    if spec.reference is not None and spec.reference not in names:
        raise ConfigError(f"{path}: reference: {spec.reference!r} is not a variant of this study ({', '.join(names)})")
    if len(set(spec.metrics)) != len(spec.metrics):
        raise ConfigError(f"{path}: metrics: each metric once, got {list(spec.metrics)} (a repeated one would count "
                          "twice in Holm's adjustment)")
    for metric in spec.metrics:
        if metric not in REGISTRY:
            close = difflib.get_close_matches(metric, list(REGISTRY), n=1)
            hint = f"did you mean {close[0]}?" if close else "name columns of a run's metrics.csv"
            raise ConfigError(f"{path}: metrics: {metric!r} is not a metric column ({hint})")
    _check_distinct(study)
    return study


def _variants(path: Path, spec: StudyFile) -> tuple[Variant, ...]:
    variants = []
    keys = list(spec.grid)
    _check_not_study_keys(path, "grid", keys)
    for pipeline_name in spec.pipelines:
        pipeline = _pipeline(path, pipeline_name)
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            overrides = tuple(f"{key}={_yaml_value(value)}" for key, value in zip(keys, values))
            suffix = "".join(f"--{key}-{safe_name(str(value))}" for key, value in zip(keys, values))
            variants.append(Variant(safe_name(Path(pipeline_name).stem) + suffix, pipeline, overrides))
    for name, body in spec.variants.items():
        check_name(name, "variants", f"rename the variant in the study file, e.g. {safe_name(str(name))}")
        if not isinstance(body, dict) or set(body) - {"pipeline", "set"} or "pipeline" not in body:
            raise ConfigError(f"{path}: variants.{name}: write {{pipeline: <name or path>, set: {{key: value}}}}")
        settings = body.get("set") or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: variants.{name}.set: a mapping of dotted keys to values")
        _check_not_study_keys(path, f"variants.{name}.set", list(settings))
        overrides = tuple(f"{key}={_yaml_value(value)}" for key, value in settings.items())
        variants.append(Variant(name, _pipeline(path, str(body["pipeline"])), overrides))
    seen: dict[str, Variant] = {}
    for variant in variants:
        if variant.name in seen:
            raise ConfigError(f"{path}: two variants are named {variant.name}: rename one (variants: ...)")
        seen[variant.name] = variant
    return tuple(variants)


# Set by the study for every run (StudyRun.overrides): a variant's own value would be overridden.
STUDY_KEYS = {"seed": "seeds: [...]", "name": "the variant's name", "generations": "generations: N"}


def _check_not_study_keys(path: Path, where: str, keys: list) -> None:
    for key in keys:
        if key in STUDY_KEYS:
            raise ConfigError(f"{path}: {where}: {key} is the study's to set, once for every run: use the study "
                              f"file's {STUDY_KEYS[key]} instead")


def _pipeline(study_path: Path, given: str) -> Path:
    beside = study_path.parent / given
    return beside if beside.is_file() else resolve_pipeline(given)


def _yaml_value(value: Any) -> str:
    """A value as an override's text: YAML on one line (lists in brackets), each text single-quoted
    so that it stays one value: ``description: "a train.epochs=1"`` would otherwise be read as a
    second override (an override's words are split where they hold ``=``)."""
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style="'", width=10**6).strip().removesuffix("...").strip()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_value(key)}: {_yaml_value(item)}" for key, item in value.items()) + "}"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _check_distinct(study: Study) -> None:
    """Every variant's config is built (a value the config refuses stops here, naming the
    variant); two variants whose runs would compute the same thing are refused."""
    seen: dict[str, str] = {}
    for variant in study.variants:
        try:
            run = study.run(variant, study.spec.seeds[0])
            run.config  # noqa: B018 - built here, so a refused value stops the study before anything runs
        except ConfigError as err:
            raise ConfigError(f"{study.path}: variant {variant.name}: {err}") from None
        fingerprint = run.config.fingerprint(ignoring=("seed",))
        if fingerprint in seen:
            raise ConfigError(f"{study.path}: variants {seen[fingerprint]} and {variant.name} resolve to the same runs "
                              "(every result-affecting setting equal): drop one, or make them differ")
        seen[fingerprint] = variant.name
