"""`ssmlm-recall` (also `python -m ssmlm.cli.recall`): the synthetic recall suite, every kernel and block trained on
MQAR (or associative recall, the induction head, selective copying) over a curriculum of lengths, accuracy against
the distance to the key, and the H3 paper's Table 1 in the same run (ssmlm/study/recall.py says how).

    ssmlm-recall --out reports/recall                                   # the committed sweep
    ssmlm-recall --out /tmp/recall --models attention h3 --lengths 64 256 --steps 300 200 --batch-sizes 32 8
    ssmlm-recall --out /tmp/recall --config my-model.yaml --no-table1   # a config of your own, by its block settings
    ssmlm-recall --out /tmp/recall --quick                              # end to end at a tiny size

The runs go to --runs (default OUT/runs); a model done before is not trained again, so the same command continues a
stopped sweep; a runs folder of other settings is refused rather than reused.

Exit codes: 0 done; 2 a problem with the options or a config; 74 writing failed; 130 stopped by Ctrl-C or SIGTERM.
"""

import argparse
import sys
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

from .entry import ArgumentParser, CommandError, run
from .study import run_to_a_stop

TASK_NAMES = ("mqar", "associative-recall", "induction-head", "selective-copy")


def build_parser(prog: str = "ssmlm-recall") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Which sequence mixers recall across long distances: synthetic "
                                                   "recall tasks for every kernel and block.")
    parser.add_argument("--out", required=True, metavar="DIR", help="where recall.json, README.md, recall.png go")
    parser.add_argument("--runs", metavar="DIR", help="where each model's record goes (default OUT/runs)")
    parser.add_argument("--models", nargs="+", metavar="NAME", help="the sweep's models to run (default all)")
    parser.add_argument("--config", nargs="+", default=[], metavar="CONFIG",
                        help="also run the model of these configs (shipped names or YAML paths), by its name")
    parser.add_argument("--task", choices=TASK_NAMES, default="mqar")
    parser.add_argument("--lengths", nargs="+", type=int, metavar="L", help="the curriculum's lengths")
    parser.add_argument("--steps", nargs="+", type=int, metavar="N", help="steps at each length")
    parser.add_argument("--batch-sizes", nargs="+", type=int, metavar="B", help="sequences a step at each length")
    parser.add_argument("--pairs", type=int, help="MQAR's key-value pairs, selective copying's tokens (default 8)")
    parser.add_argument("--width", type=int, help="every model's hidden size (default 64)")
    parser.add_argument("--layers", type=int, help="blocks per model (default 2)")
    parser.add_argument("--vocab", type=int, help="vocabulary (default 256)")
    parser.add_argument("--learning-rate", type=float, help="AdamW's peak rate (default 2e-3)")
    parser.add_argument("--ssm-learning-rate", type=float, help="the SSM parameters' peak rate (default 1e-3)")
    parser.add_argument("--workers", type=int, default=2, help="models trained at a time, one thread each (default 2)")
    parser.add_argument("--table1-steps", type=int, help="training steps of each Table 1 model and task (default 3000)")
    parser.add_argument("--no-table1", action="store_true", help="skip the H3 paper's Table 1")
    parser.add_argument("--quick", action="store_true", help="a tiny sweep (the test suite's)")
    return parser


def settings_from(args, parser):
    from ..study.recall import QUICK, RecallSettings, Stage  # torch: after --help

    settings = QUICK if args.quick else RecallSettings()
    if args.lengths or args.steps or args.batch_sizes:
        lengths = args.lengths or [stage.length for stage in settings.stages]
        for option, values in (("--steps", args.steps), ("--batch-sizes", args.batch_sizes)):
            if values is not None and len(values) != len(lengths):
                parser.error(f"{option} takes one value per length ({len(lengths)}), got {len(values)}")
        defaults = {stage.length: stage for stage in settings.stages}
        last = settings.stages[-1]
        settings = replace(settings, stages=tuple(
            Stage(length, args.steps[index] if args.steps else defaults.get(length, last).steps,
                  args.batch_sizes[index] if args.batch_sizes else defaults.get(length, last).batch_size)
            for index, length in enumerate(lengths)))
    given = {key: getattr(args, key) for key in ("pairs", "width", "layers", "vocab", "learning_rate",
                                                  "ssm_learning_rate", "table1_steps") if getattr(args, key) is not None}
    return replace(settings, task=args.task, **given)


def recall_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if find_spec("matplotlib") is None:
        raise CommandError("the report's picture needs matplotlib: pip install 'ssmlm[plots]'")

    from ..study.recall import RecallSweep, sweep_models
    from ..training.config import config_path

    settings = settings_from(args, parser)
    available = sweep_models()
    unknown = sorted(set(args.models or []) - set(available))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; the sweep's models are {', '.join(available)}")
    models = {name: available[name] for name in (args.models or available)}
    models |= {Path(str(config_path(config))).stem: (config, {}) for config in args.config}
    out = Path(args.out)
    sweep = RecallSweep(out, Path(args.runs) if args.runs else out / "runs", settings, models, args.workers,
                        table1=not args.no_table1,
                        log=lambda text: print(f"{parser.prog}: {text}", file=sys.stderr, flush=True))
    try:
        sweep.check()
    except ValueError as error:
        raise CommandError(str(error)) from None
    if (stopped := run_to_a_stop(parser.prog, sweep.run)) is not None:
        return stopped
    print(f"{args.out}/README.md written")
    return 0


def main(argv: list[str] | None = None, prog: str = "ssmlm-recall") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: recall_from_command_line(parser, argv))


if __name__ == "__main__":
    raise SystemExit(main())
