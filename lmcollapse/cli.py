"""The command line: ``lmcollapse <verb>`` (also ``python -m lmcollapse``; the Makefile calls it).

    lmcollapse run --pipeline pipelines/tiny.yaml                 # generations 0..generations-1
    lmcollapse run --pipeline tiny                                # the same, by name, from any folder
    lmcollapse pipelines                                          # the shipped pipelines
    lmcollapse generation 3 --pipeline pipelines/tiny.yaml --set train.epochs=1
    lmcollapse run --dry-run --pipeline pipelines/shumailov-opt125m.yaml
    lmcollapse status --run runs/tiny
    lmcollapse config --pipeline pipelines/tiny.yaml              # every key, documented

Errors the user can fix print one line (``lmcollapse: error: ...``) and exit non-zero; a
stopped stage (SIGINT/SIGTERM) exits 130 and resumes with the same command.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import sys
from pathlib import Path

from lmcollapse.config.loading import parse_overrides
from lmcollapse.config.shipped import describe_pipelines, resolve_pipeline, shipped_pipelines
from lmcollapse.engine.allocator import keep_freed_memory
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import check_folder_target, full_disk_reported
from lmcollapse.run.layout import RunDir, refuse_inside_run
from lmcollapse.studies.commands import add_study_commands

log = logging.getLogger("lmcollapse")


def _add_pipeline_arguments(parser: argparse.ArgumentParser, with_run: bool = True) -> None:
    parser.add_argument("--pipeline", type=Path, default=None,
                        help="pipeline YAML, or the name of a shipped one (lmcollapse pipelines lists them) "
                        "(default: the run's own pipeline.yaml when --run names an existing run, else "
                        "pipelines/tiny.yaml here)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. --set train.epochs=1 seed=3")
    if with_run:
        parser.add_argument("--run", type=Path, default=None,
                            help="run directory (default: runs/<pipeline name>)")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the plan (stages, sizes, settings) and compute nothing")
        parser.add_argument("--accept-changed", action="store_true",
                            help="use earlier artefacts whose files changed since they were recorded "
                            "(or ACCEPT_CHANGED=1)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
        parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                            help="run the pipeline once per seed into RUN/seed-<seed> (RUN default: runs/<name>-seeds)")


def env_flag(name: str) -> bool:
    """A yes-or-no environment variable: unset, 0, false, no, off are no; 1, true, yes, on are yes."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise LmcollapseError(f"{name}={os.environ[name]!r} is neither yes nor no: set {name}=1 or {name}=0, or unset it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmcollapse", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="build every generation of a pipeline and print the metrics table")
    _add_pipeline_arguments(run)
    run.set_defaults(func=command_run)

    generation = verbs.add_parser("generation", help="make generations 0..N complete (skip done, resume partial)")
    generation.add_argument("last", type=int, metavar="N", help="last generation to build")
    _add_pipeline_arguments(generation)
    generation.set_defaults(func=command_generation)

    report = verbs.add_parser("report", help="tables (md, csv, tex, json), figures and index.md for a run or a folder of runs")
    report.add_argument("--run", type=Path, required=True, help="a run directory, or a folder of runs (seeds, regimes)")
    report.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/report)")
    report.add_argument("--reference", default=None, metavar="PIPELINE",
                        help="with runs of several seeds: the group the others are compared with (default: the first)")
    report.set_defaults(func=command_report)

    add_study_commands(verbs)

    pretrain = verbs.add_parser("pretrain", help="pretrain the base a pipeline needs, once (cached; every run of it "
                                "then copies it); nothing else is built")
    _add_pipeline_arguments(pretrain, with_run=False)
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bars")
    pretrain.set_defaults(func=command_pretrain)

    export = verbs.add_parser("export", help="a self-contained copy of a run to share: corpora as datasets with cards, "
                              "models with cards, metrics, report")
    export.add_argument("--run", type=Path, required=True, help="the run directory")
    export.add_argument("--to", type=Path, required=True, help="a new (or empty) folder for the copy")
    export.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None,
                        help="then upload the copy as a hub dataset repository (needs the network and a token)")
    export.set_defaults(func=command_export)

    status = verbs.add_parser("status", help="per stage: complete, damaged, stale, pending, partial or missing (every "
                              "file checked against its manifest; exit 1 if anything is damaged, stale or pending); "
                              "what comes next")
    status.add_argument("--run", type=Path, required=True)
    status.add_argument("--quick", action="store_true",
                        help="check that files are present, not their sha256 (manifests and lineage are still checked)")
    status.set_defaults(func=command_status)

    config = verbs.add_parser("config", help="print the resolved config with every key documented")
    _add_pipeline_arguments(config, with_run=False)
    config.set_defaults(func=command_config)

    theory = verbs.add_parser("theory", help="simulate the Gaussian and categorical cases against their closed forms")
    from lmcollapse.theory import TheorySettings

    defaults = TheorySettings()
    theory.add_argument("--out", type=Path, default=Path("runs/theory"), help="output folder (default: runs/theory)")
    theory.add_argument("--chains", type=int, default=defaults.chains, help="independent Gaussian chains")
    theory.add_argument("--generations", type=int, default=defaults.generations, help="Gaussian generations")
    theory.add_argument("--samples", type=int, default=defaults.samples, help="N, samples per Gaussian generation")
    theory.add_argument("--real-fraction", type=float, default=defaults.real_fraction, help="keep-fraction regime's r")
    theory.add_argument("--seed", type=int, default=defaults.seed)
    theory.set_defaults(func=command_theory)

    pipelines = verbs.add_parser("pipelines", help="list the pipelines that ship with lmcollapse")
    pipelines.set_defaults(func=command_pipelines)

    data = verbs.add_parser("data", help="download the corpus a pipeline names into data/ (needs network)")
    _add_pipeline_arguments(data, with_run=False)
    data.set_defaults(func=command_data)
    return parser


DEFAULT_PIPELINE = Path("pipelines/tiny.yaml")


def _pipeline_path(args) -> Path:
    """--pipeline (a file, or a shipped pipeline's name), or the resolved config of the run --run
    names, or pipelines/tiny.yaml here."""
    if args.pipeline is not None:
        return resolve_pipeline(args.pipeline)
    run = getattr(args, "run", None)
    if run is not None:
        candidates = [RunDir(run).pipeline_file]
        if getattr(args, "seeds", None) and run.is_dir():  # a folder of seeds: any seed's config, reseeded
            candidates += sorted(RunDir(seed).pipeline_file for seed in run.glob("seed-*"))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    if DEFAULT_PIPELINE.is_file():
        return DEFAULT_PIPELINE
    # Elsewhere no run starts unasked: the hint names the shipped default, which works from here.
    example = DEFAULT_PIPELINE.stem if DEFAULT_PIPELINE.stem in shipped_pipelines() else "path/to/pipeline.yaml"
    raise LmcollapseError(f"no --pipeline given and there is no {DEFAULT_PIPELINE} in {Path.cwd()}: pass --pipeline "
                          f"{example} (a shipped pipeline; lmcollapse pipelines lists them), a YAML file, or --run an "
                          "existing run, whose pipeline.yaml is used")


def _load(args):
    from lmcollapse.config import load_config

    args.pipeline = _pipeline_path(args)
    config = load_config(args.pipeline, args.set)
    run_root = args.run if getattr(args, "run", None) else Path("runs") / config.name
    return config, run_root


def _build(args, last: int | None) -> int:
    """Build generations 0..last (None: the config's ``generations``) of one run, or one run per seed."""
    from lmcollapse.config import load_config
    from lmcollapse.metrics.table import summary_table
    from lmcollapse.stages.pipeline import build
    from lmcollapse.views.plan import describe_plan

    config, run_root = _load(args)
    last = config.generations - 1 if last is None else last
    if last < 0:  # the dry run too: it plans what the command would do
        raise LmcollapseError(f"generation {last} does not exist: generations count from 0")
    runs = [(config, run_root)]
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise LmcollapseError(f"--seeds/SEEDS must be distinct non-negative integers, got {args.seeds}")
        if "seed" in parse_overrides(args.set):
            raise LmcollapseError("--set seed=... and --seeds/SEEDS both choose the seed: give the seeds with --seeds "
                                  "(SEEDS=\"0 1 2\") only")
        run_root = args.run if args.run else Path("runs") / f"{config.name}-seeds"
        if RunDir(run_root).pipeline_file.is_file():
            raise LmcollapseError(f"{run_root} is a single run: give SEEDS a folder of its own (RUN=runs/<name>-seeds)")
        runs = [(load_config(args.pipeline, [*args.set, f"seed={seed}"]), run_root / f"seed-{seed}") for seed in args.seeds]
    with full_disk_reported(run_root):
        for seed_config, root in runs:
            if args.dry_run:
                print(describe_plan(seed_config, RunDir(root), last))
                continue
            if last >= seed_config.generations and is_main_process():
                warn_if_large(seed_config, RunDir(root), last)
            build(seed_config, root, last, accept_changed=args.accept_changed or env_flag("ACCEPT_CHANGED"),
                  progress=not args.no_progress)
            if is_main_process():
                print(f"\n{RunDir(root).metrics_csv}\n{summary_table(RunDir(root))}")
    if args.seeds and not args.dry_run and is_main_process():
        print(f"\n{len(runs)} seeds in {run_root}: make report RUN={shlex.quote(str(run_root))} aggregates them")
    return 0


# Beyond the pipeline's own generations, a build this large gets a word before it starts.
LARGE_BUILD_SECONDS, LARGE_BUILD_BYTES = 3600.0, 10e9


def warn_if_large(config, run: RunDir, last: int) -> None:
    """Warn (and go on) when generations beyond the pipeline's ``generations`` will take long or
    fill a disk: ``generation 99999`` typed by mistake should not start without a word of its cost."""
    from lmcollapse.views.plan import build_estimate

    try:
        found = build_estimate(config, run, last)
    except LmcollapseError:
        return  # the build itself reports what is wrong, in its own words
    if found is None or (found.seconds < LARGE_BUILD_SECONDS and found.disk_bytes < LARGE_BUILD_BYTES):
        return
    from lmcollapse.views.cost import duration

    seconds, disk = found.seconds, found.disk_bytes
    log.warning("generation %d is beyond the %d generation(s) this pipeline builds: ~%s and ~%.0f GB of disk on this "
                "machine by the cost model (the same command with --dry-run shows the plan); Ctrl-C stops it, and "
                "what is built is kept", last, config.generations, duration(seconds), disk / 1e9)


def command_run(args) -> int:
    return _build(args, None)


def command_generation(args) -> int:
    return _build(args, args.last)


def command_report(args) -> int:
    from lmcollapse.report import write_report

    if args.out is not None:
        check_folder_target(args.out, "--out", "--out report-copy")
        refuse_inside_run(args.out, "--out", "--out report-copy", allowed="report")
    try:
        with full_disk_reported(args.run):
            out = write_report(args.run, args.out, reference=args.reference)
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        target = args.out or args.run / "report"
        raise LmcollapseError(
            f"cannot write the report into {target}, the folder is read-only ({err.strerror}): write it elsewhere "
            "with --out, e.g. "
            f"{shlex.quote(sys.executable)} -m lmcollapse report --run {shlex.quote(str(args.run))} --out report-copy") from None
    print((out / "index.md").read_text(encoding="utf-8").split("## Figures")[0].rstrip())
    print(f"\nreport written to {out}/ (index.md, metrics.md/.csv/.tex/.json, figures .png/.svg)")
    return 0


def command_export(args) -> int:
    from lmcollapse.report.export import export_run, push_to_hub

    check_folder_target(args.to, "--to", f"--to exports/{args.run.name or 'run'}")
    if not (args.to.is_dir() and any(args.to.iterdir())):  # a non-empty one is refused as such (export_run)
        refuse_inside_run(args.to, "--to", f"--to exports/{args.run.name or 'run'}")
    with full_disk_reported(args.to.parent if args.to.parent != Path("") else Path(".")):
        folder = export_run(RunDir(args.run), args.to)
    print(f"exported {args.run} to {folder}/ (README.md says what is where)")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(folder, args.push_to_hub)}")
    return 0


def command_status(args) -> int:
    from lmcollapse.views.status import describe_status

    text, healthy = describe_status(RunDir(args.run), quick=args.quick)
    print(text)
    return 0 if healthy else 1


def command_pretrain(args) -> int:
    from lmcollapse.config import load_config
    from lmcollapse.data.corpus import CorpusPlan
    from lmcollapse.run.interrupts import stop_on_signals
    from lmcollapse.stages.context import make_accelerator
    from lmcollapse.stages.pretrain import ensure_pretrained_base

    pipeline = load_config(_pipeline_path(args), args.set)
    # Each preset family's base (one without model.chain).
    families = [pipeline.for_family(entry) for entry in pipeline.model.entries]
    presets = [config for config in families if config.model.is_preset and config.pretrain.enabled]
    if not presets:
        why = "pretrain.corpus is null" if pipeline.model.is_preset else f"{pipeline.model.name} is pretrained already"
        print(f"{pipeline.name}: nothing to pretrain ({why})")
        return 0
    corpus = CorpusPlan(pipeline)
    corpus.check_pretraining_text()
    for config in presets:
        with stop_on_signals():
            entry = ensure_pretrained_base(config, make_accelerator(config), corpus, progress=not args.no_progress)
        if is_main_process():
            print(f"{config.model.name} pretrained base: {entry.model}")
    return 0


def command_pipelines(args) -> int:
    print(describe_pipelines())
    return 0


def command_config(args) -> int:
    from lmcollapse.config import describe_config, load_config

    print(describe_config(load_config(_pipeline_path(args), args.set)), end="")
    return 0


def command_theory(args) -> int:
    import dataclasses
    import time

    from lmcollapse.theory import TheorySettings, write_theory_report
    from lmcollapse.theory.report import checked_settings

    check_folder_target(args.out, "--out", "--out runs/theory")
    settings = checked_settings(dataclasses.replace(TheorySettings(), chains=args.chains, generations=args.generations,
                                                    samples=args.samples, real_fraction=args.real_fraction, seed=args.seed))
    started = time.perf_counter()
    written = write_theory_report(args.out, settings)
    print((args.out / "theory.md").read_text(encoding="utf-8"))
    print(f"{len(written)} files in {args.out} ({time.perf_counter() - started:.1f} s)")
    return 0


def command_data(args) -> int:
    from lmcollapse.config import load_config
    from lmcollapse.data.read import fetch_named_corpus

    config = load_config(_pipeline_path(args), args.set)
    print(f"{config.data.corpus} -> {fetch_named_corpus(config.data.corpus, Path('data'))}")
    return 0


def quiet_libraries() -> None:
    """Our own progress bars and log lines only; the libraries' per-call bars and notices are noise."""
    # Variables the libraries read once, at import: importing them here to call their setters cost
    # every command 2.6 s, a status or a plan that never needs them included. Where one is loaded
    # already (main() called from Python), its setter.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the hub's
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
    # faiss (MAUVE's clustering) logs which of its CPU builds it tried, at INFO, on every import.
    for noisy in ("datasets", "transformers", "httpx", "urllib3", "filelock", "huggingface_hub", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # accelerate warns on every checkpoint that tied embeddings are saved once: expected for OPT.
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def is_main_process() -> bool:
    """Whether this is the only process, or rank 0 of ``accelerate launch`` / torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="lmcollapse: %(message)s", stream=sys.stderr)
    quiet_libraries()
    try:
        keep_freed_memory()  # before the stages allocate anything large (engine/allocator.py says why)
        return args.func(args)
    except LmcollapseError as err:
        print(f"lmcollapse: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
