"""The command line: ``lmcollapse <verb>`` (also ``python -m lmcollapse``; the Makefile calls it).

    lmcollapse run --pipeline pipelines/tiny.yaml                 # generations 0..generations-1
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
import shutil
import sys
from pathlib import Path

from lmcollapse.errors import LmcollapseError

log = logging.getLogger("lmcollapse")


def _add_pipeline_arguments(parser: argparse.ArgumentParser, with_run: bool = True) -> None:
    parser.add_argument("--pipeline", type=Path, default=Path("pipelines/tiny.yaml"),
                        help="pipeline YAML (default: pipelines/tiny.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. --set train.epochs=1 seed=3")
    if with_run:
        parser.add_argument("--run", type=Path, default=None,
                            help="run directory (default: runs/<pipeline name>)")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the plan (stages, sizes, settings) and compute nothing")
        parser.add_argument("--accept-changed", action="store_true",
                            default=os.environ.get("ACCEPT_CHANGED", "") not in ("", "0"),
                            help="use earlier artefacts whose files changed since they were recorded")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
        parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                            help="run the pipeline once per seed into RUN/seed-<seed> (RUN default: runs/<name>-seeds)")


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
    report.set_defaults(func=command_report)

    status = verbs.add_parser("status", help="per generation: complete, partial or missing; and what comes next")
    status.add_argument("--run", type=Path, required=True)
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

    data = verbs.add_parser("data", help="download the corpus a pipeline names into data/ (needs network)")
    _add_pipeline_arguments(data, with_run=False)
    data.set_defaults(func=command_data)
    return parser


def _load(args):
    from lmcollapse.config import load_config

    config = load_config(args.pipeline, args.set)
    run_root = args.run if getattr(args, "run", None) else Path("runs") / config.name
    args.resolved_run = run_root  # for the error handler: which filesystem may be full
    return config, run_root


def _build(args, last: int | None) -> int:
    """Build generations 0..last (None: the config's ``generations``) of one run, or one run per seed."""
    from lmcollapse.config import load_config
    from lmcollapse.pipeline import build, summary_table
    from lmcollapse.plan import describe_plan
    from lmcollapse.rundir import RunDir

    config, run_root = _load(args)
    last = config.generations - 1 if last is None else last
    runs = [(config, run_root)]
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise LmcollapseError(f"--seeds/SEEDS must be distinct non-negative integers, got {args.seeds}")
        folder = args.run if args.run else Path("runs") / f"{config.name}-seeds"
        if (folder / "pipeline.yaml").is_file():
            raise LmcollapseError(f"{folder} is a single run: give SEEDS a folder of its own (RUN=runs/<name>-seeds)")
        runs = [(load_config(args.pipeline, [*args.set, f"seed={seed}"]), folder / f"seed-{seed}") for seed in args.seeds]
        args.resolved_run = folder
    for seed_config, root in runs:
        if args.dry_run:
            print(describe_plan(seed_config, RunDir(root), last))
            continue
        build(seed_config, root, last, accept_changed=args.accept_changed, progress=not args.no_progress)
        if _is_main_process():
            print(f"\n{root}/metrics.csv\n{summary_table(RunDir(root))}")
    if args.seeds and not args.dry_run and _is_main_process():
        print(f"\n{len(runs)} seeds in {args.resolved_run}: make report RUN={args.resolved_run} aggregates them")
    return 0


def command_run(args) -> int:
    return _build(args, None)


def command_generation(args) -> int:
    return _build(args, args.last)


def command_report(args) -> int:
    from lmcollapse.report import write_report

    args.resolved_run = args.run
    out = write_report(args.run, args.out)
    print((out / "index.md").read_text(encoding="utf-8").split("## Figures")[0].rstrip())
    print(f"\nreport written to {out}/ (index.md, metrics.md/.csv/.tex/.json, figures .png/.svg)")
    return 0


def command_status(args) -> int:
    from lmcollapse.plan import describe_status
    from lmcollapse.rundir import RunDir

    print(describe_status(RunDir(args.run)))
    return 0


def command_config(args) -> int:
    from lmcollapse.config import describe_config, load_config

    print(describe_config(load_config(args.pipeline, args.set)), end="")
    return 0


def command_theory(args) -> int:
    import dataclasses
    import time

    from lmcollapse.theory import TheorySettings, write_theory_report

    if args.chains < 2 or args.generations < 1 or args.samples < 2 or not 0 <= args.real_fraction < 1:
        raise LmcollapseError("theory needs --chains >= 2, --generations >= 1, --samples >= 2 and 0 <= --real-fraction < 1")
    settings = dataclasses.replace(TheorySettings(), chains=args.chains, generations=args.generations,
                                   samples=args.samples, real_fraction=args.real_fraction, seed=args.seed)
    started = time.perf_counter()
    written = write_theory_report(args.out, settings)
    print((args.out / "theory.md").read_text(encoding="utf-8"))
    print(f"{len(written)} files in {args.out} ({time.perf_counter() - started:.1f} s)")
    return 0


def command_data(args) -> int:
    from lmcollapse.config import load_config
    from lmcollapse.corpus import fetch_named_corpus

    config = load_config(args.pipeline, args.set)
    print(f"{config.data.corpus} -> {fetch_named_corpus(config.data.corpus, Path('data'))}")
    return 0


def quiet_libraries() -> None:
    """Our own progress bars and log lines only; the libraries' per-call bars and notices are noise."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for noisy in ("datasets", "transformers", "httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # accelerate warns on every checkpoint that tied embeddings are saved once: expected for OPT.
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="lmcollapse: %(message)s", stream=sys.stderr)
    quiet_libraries()
    try:
        return args.func(args)
    except LmcollapseError as err:
        print(f"lmcollapse: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:
        full = disk_full(err, getattr(args, "resolved_run", None))
        if full is None:
            raise
        print(f"lmcollapse: error: disk full while writing {full}: free space and rerun the same command; "
              "completed stages are intact", file=sys.stderr)
        return 3


DISK_NEARLY_FULL = 1 << 20  # bytes


def disk_full(err: BaseException, run_root: Path | None = None) -> str | None:
    """What was being written when the disk filled, or None if ``err`` is something else.

    Python reports ENOSPC/EDQUOT with an errno and pyarrow in its message, but torch's zip
    writer only says "unexpected pos"; so an error while the run's filesystem is (nearly) full
    counts as a full disk too.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(seen.filename or run_root or "the run")
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return str(run_root or "the run")
        seen = seen.__cause__ or seen.__context__
    if run_root is not None:
        existing = next((p for p in (Path(run_root), *Path(run_root).parents) if p.exists()), None)
        if existing is not None and shutil.disk_usage(existing).free < DISK_NEARLY_FULL:
            return str(run_root)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
