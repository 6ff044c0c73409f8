"""`ssmlm-study` (also `python -m ssmlm.cli.study`): train every model of a study plan on the same corpus, tokenizer and
tokens, evaluate and time them, and write the report (the README's study section explains it).

    ssmlm-study --plan small --out reports/study-small           # the shipped plan, all phases
    ssmlm-study --plan small --out reports/study-small --phases sweep
    ssmlm-study --plan small --out /tmp/study --quick            # the same plan end to end at a tiny size

A phase or training run already done in OUT is not done again: run the same command to continue a study that was
stopped (there is no --resume: the same command is the way).

Exit codes: 0 done (a run that diverged is a result, recorded in the report); 1 the evaluation's two regimes
disagreed somewhere; 2 a problem with the plan, a config or the data (the whole plan is checked before anything
trains); 74 writing failed (a full disk, ...); 130 stopped by Ctrl-C or SIGTERM (a run stopped midway keeps a
checkpoint, and the same command continues it).
"""

import argparse
import sys
from importlib.util import find_spec
from pathlib import Path

from ..shipped import shipped_plan_names
from ..study import PHASES
from .entry import CHECK_FAILED, STOPPED, ArgumentParser, CommandError, run

CONTINUE = "run the same command to continue the study"


def build_parser(prog: str = "ssmlm-study") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Train, evaluate and time every model of a study plan, and report "
                                                   "on the papers' claims.")
    parser.add_argument("--plan", default="small", metavar="FILE|NAME",
                        help=f"a study plan: a YAML file or a shipped plan's name: {', '.join(shipped_plan_names())} "
                             f"(default: small)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the runs, evaluations and report go")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="the phases to run, in their order (default: all)")
    parser.add_argument("--quick", action="store_true", help="the plan at its quick section's tiny size")
    parser.add_argument("--corpus", metavar="DIR",
                        help="train on DIR/DOMAIN/{train,validation}.jsonl and evaluate on DIR/DOMAIN/test.jsonl "
                             "instead of the configs' own data")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a config setting for every run, after the plan's (e.g. data.cache_dir=/tmp/cache)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads of the evaluation and timing")
    return parser


def study_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")

    # Imported after parsing, so --help is quick.
    from ..study.plan import load_plan
    from ..study.runner import Study

    plan = load_plan(args.plan)
    if args.quick:
        plan = plan.quick_version()
    study = Study(plan, Path(args.out), Path(args.corpus) if args.corpus else None, args.settings, args.threads,
                  log=lambda text: print(f"{parser.prog}: {text}", file=sys.stderr, flush=True))
    study.check()  # every config, before anything trains
    if "evaluate" in args.phases and find_spec("matplotlib") is None:
        raise CommandError("the evaluation's plots need matplotlib: pip install 'ssmlm[plots]' (or matplotlib)")
    if (stopped := run_to_a_stop(parser.prog, lambda: study.run(args.phases))) is not None:
        return stopped
    return CHECK_FAILED if study.disagreed() else 0


def run_to_a_stop(prog: str, run_study) -> int | None:
    """Run a study; a run stopped by Ctrl-C or SIGTERM (which keeps its checkpoint) is said with how to continue,
    and gives STOPPED; None when the study ran to its end."""
    from ..training import TrainingStopped

    try:
        run_study()
    except TrainingStopped as stop:
        print(f"{prog}: a run stopped at step {stop.step}, with a checkpoint; {CONTINUE}", file=sys.stderr)
        return STOPPED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {CONTINUE}", file=sys.stderr)
        return STOPPED
    return None


def main(argv: list[str] | None = None, prog: str = "ssmlm-study") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: study_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
