"""The study verbs of the command line: ``lmcollapse study plan|run|status|report STUDY`` and
``lmcollapse studies`` (the shipped ones); ``lmcollapse.cli`` adds them to its parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import check_folder_target, full_disk_reported
from lmcollapse.run.layout import refuse_inside_run


def add_study_commands(verbs) -> None:
    study = verbs.add_parser("study", help="a grid of runs over pipelines, settings and seeds: plan, run (locally or "
                             "on SLURM), status, report with confidence intervals and tests")
    study.add_argument("action", choices=["plan", "run", "status", "report"],
                       help="plan: every run, its folder and cost; run: build what is not complete; status: where "
                       "every run is; report: tables, statistics and figures")
    study.add_argument("file", metavar="STUDY", help="a study file, or the name of a shipped one (lmcollapse studies)")
    study.add_argument("--launcher", choices=["local", "slurm"], default=None,
                       help="run: override the study file's launcher")
    study.add_argument("--slots", type=_at_least_one, default=None,
                       help="run (local): how many runs at once (default: the machine divided by resources)")
    study.add_argument("--dry-run", action="store_true",
                       help="run: print what would be launched (slurm: the sbatch script) and launch nothing")
    study.add_argument("--out", type=Path, default=None, help="report: output folder (default: <study root>/report)")
    study.set_defaults(func=command_study)

    studies = verbs.add_parser("studies", help="list the studies that ship with lmcollapse")
    studies.set_defaults(func=command_studies)


def command_study(args) -> int:
    from lmcollapse.config.shipped import resolve_study
    from lmcollapse.studies import describe_study_status, load_study, plan_study, run_study, write_study_report

    given = {"--launcher": args.launcher is not None, "--slots": args.slots is not None, "--dry-run": args.dry_run,
             "--out": args.out is not None}
    for option in (o for o, present in given.items() if present and o not in TAKES[args.action]):
        taken_by = " and ".join(f"study {action}" for action, options in TAKES.items() if option in options)
        raise LmcollapseError(f"{option} is an option of {taken_by}, not of study {args.action}: leave it out")
    study = load_study(resolve_study(args.file))
    if args.action == "plan":
        print(plan_study(study))
        return 0
    if args.action == "status":
        text, _ = describe_study_status(study, args.slots)
        print(text)
        return 0
    if args.action == "report":
        if args.out is not None:
            check_folder_target(args.out, "--out", "--out report-copy")
            refuse_inside_run(args.out, "--out", "--out report-copy")
        out = write_study_report(study, args.out)
        print((out / "index.md").read_text(encoding="utf-8").split("## Figures")[0].rstrip())
        print(f"\nreport written to {out}/ (index.md and .html, statistics.md/.csv/.tex/.json, metrics, figures)")
        return 0
    with full_disk_reported(study.root):
        return run_study(study, args.launcher, args.slots, args.dry_run)


# The options each action reads; any other is refused rather than accepted and ignored.
TAKES = {"plan": (), "run": ("--launcher", "--slots", "--dry-run"), "status": ("--slots",), "report": ("--out",)}


def command_studies(args) -> int:
    from lmcollapse.config.shipped import describe_shipped

    print(describe_shipped("studies"))
    return 0


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)
