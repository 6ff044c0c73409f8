"""`ssmlm-train` (also `python -m ssmlm.cli.train` and `python train.py` in a checkout): train an ssmlm model from a
YAML config, or from a shipped config named without a path.

    ssmlm-train                                              # the shipped gss-small on the default corpus
    ssmlm-train --config gss-hybrid-small training.max_steps=100 output.dir=runs/try
    ssmlm-train --config my.yaml --resume                    # continue from the newest intact checkpoint
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m ssmlm.cli.train ...

Exit codes: 0 trained; 1 training diverged (the newest checkpoint is from before); 2 a problem with the config, the
data or the output directory, found before anything was written; 74 writing failed (a full disk, ...: the message
names the path; the newest intact checkpoint is kept, and a start that failed leaves nothing in the way of the same
command); 130 stopped by Ctrl-C or SIGTERM.
"""

import argparse
import sys

from ..shipped import shipped_config_names
from .entry import CHECK_FAILED, STOPPED, ArgumentParser, print_error, run

DEFAULT_CONFIG = "gss-small"


def build_parser(prog: str = "ssmlm-train") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog, description="Train an ssmlm model from a YAML config.",
        epilog="On several GPUs (or CPU processes, with ACCELERATE_USE_CPU=1): accelerate launch --multi_gpu "
               "--num_processes N -m ssmlm.cli.train [OPTIONS]")
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE|NAME",
                        help=f"YAML training config, or the name of a shipped one: {', '.join(shipped_config_names())} "
                             f"(default: {DEFAULT_CONFIG})")
    run_mode = parser.add_mutually_exclusive_group()
    run_mode.add_argument("--resume", action="store_true",
                          help="continue from the newest intact checkpoint in output.dir")
    run_mode.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint directory")
    run_mode.add_argument("--overwrite", action="store_true",
                          help="replace the earlier ssmlm run in output.dir; it is kept as <dir>.replaced until the "
                               "new run finishes")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY[,KEY...]",
                        help="with --resume: accept these settings differing from the checkpoint's (dotted keys or "
                             "sections, e.g. training.learning_rate,model; 'processes' for the process count)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. training.max_steps=100 model.hidden_size=128")
    return parser


def train_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    if args.allow_change and not (args.resume or args.resume_from):
        parser.error("--allow-change applies only with --resume or --resume-from")

    # Imported after parsing, so --help is quick.
    from ..training import TrainingDiverged, TrainingStopped, load_config, train
    from ..training.config import config_path

    allowed = tuple(key.strip() for keys in args.allow_change for key in keys.split(",") if key.strip())
    config_file = config_path(args.config)
    config = load_config(config_file, args.overrides)
    try:
        train(config, resume=args.resume, resume_from=args.resume_from, overwrite=args.overwrite,
              allow_changes=allowed, config_file=str(config_file))
    except TrainingDiverged as error:
        print_error(parser.prog, str(error))
        return CHECK_FAILED
    except TrainingStopped as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return STOPPED
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing was saved since the newest checkpoint", file=sys.stderr)
        return STOPPED
    from accelerate import PartialState

    from ..training.model_card import saved_model_line

    if PartialState().is_main_process:  # once per launch, not once per process
        print(saved_model_line(config))
    return 0


def main(argv: list[str] | None = None, prog: str = "ssmlm-train") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: train_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
