"""`ssmlm-study` (also `python -m ssmlm.cli.study` and `python scripts/study.py` in a checkout): train every model of a
study plan on the same corpus, tokenizer and tokens, evaluate and time them, and write the report (docs/study.md).

    ssmlm-study --plan small --out reports/study-small           # the shipped plan, all phases
    ssmlm-study --plan small --out reports/study-small --phases sweep
    ssmlm-study --plan small --out /tmp/study --quick            # the same plan end to end at a tiny size

A phase or training run already done in OUT is not done again: run the same command to continue a study that was
stopped. Exit codes: 0 done; 1 the evaluation's two regimes disagreed somewhere; 2 a problem with the plan, a
config or the data; 130 stopped by Ctrl-C or SIGTERM (a run stopped midway keeps a checkpoint to resume from).
"""

import argparse
import sys
from importlib.util import find_spec
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from ..study.runner import PHASES

    parser = argparse.ArgumentParser(description="Train, evaluate and time every model of a study plan, and report "
                                                 "on the papers' claims.")
    parser.add_argument("--plan", default="small", metavar="FILE|NAME",
                        help="a study plan: a YAML file or a shipped plan's name (default: small)")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from ..data.sources import DataError
    from ..study.plan import load_plan
    from ..study.runner import Study
    from ..tooling.saved_models import UsageError
    from ..training import ConfigError, TrainingStopped

    try:
        plan = load_plan(args.plan)
        if args.quick:
            plan = plan.quick_version()
        study = Study(plan, Path(args.out), Path(args.corpus) if args.corpus else None, args.settings, args.threads,
                      log=lambda text: print(f"{parser.prog}: {text}", file=sys.stderr, flush=True))
        study.check()  # every config, before anything trains
        if "evaluate" in args.phases and find_spec("matplotlib") is None:
            raise UsageError("the evaluation's plots need matplotlib: pip install 'ssmlm[plots]' (or matplotlib)")
        study.run(args.phases)
    except (ConfigError, DataError, UsageError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except (TrainingStopped, KeyboardInterrupt) as error:
        print(f"{parser.prog}: {error or 'interrupted'}; run the same command to continue the study", file=sys.stderr)
        return 130
    return 1 if study.disagreed() else 0


if __name__ == "__main__":
    sys.exit(main())
