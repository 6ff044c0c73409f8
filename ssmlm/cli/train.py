"""`ssmlm-train` (also `python -m ssmlm.cli.train` and `python train.py` in a checkout): train an ssmlm model from a
YAML config, or from a shipped config named without a path.

    ssmlm-train                                              # the shipped gss-small on the default corpus
    ssmlm-train --config gss-hybrid-small training.max_steps=100 output.dir=runs/try
    ssmlm-train --config my.yaml --resume                    # continue from the newest intact checkpoint
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m ssmlm.cli.train ...

Exit codes: 0 trained; 2 a problem with the config, the data or the output directory, found before anything was
written; 1 training diverged (the newest checkpoint is from before); 130 stopped by Ctrl-C or SIGTERM.
"""

import argparse
import sys

DEFAULT_CONFIG = "gss-small"


def build_parser() -> argparse.ArgumentParser:
    from ..training.config import shipped_config_names

    parser = argparse.ArgumentParser(
        description="Train an ssmlm model from a YAML config.",
        epilog="On several GPUs (or CPU processes, with ACCELERATE_USE_CPU=1): accelerate launch --multi_gpu "
               "--num_processes N -m ssmlm.cli.train [OPTIONS]")
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE|NAME",
                        help=f"YAML training config, or the name of a shipped one: {', '.join(shipped_config_names())} "
                             f"(default: {DEFAULT_CONFIG})")
    run = parser.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest intact checkpoint in output.dir")
    run.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint directory")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the earlier ssmlm run in output.dir; it is kept as <dir>.replaced until the new "
                          "run finishes")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY[,KEY...]",
                        help="with --resume: accept these settings differing from the checkpoint's (dotted keys or "
                             "sections, e.g. training.learning_rate,model; 'processes' for the process count)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. training.max_steps=100 model.hidden_size=128")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    if args.allow_change and not (args.resume or args.resume_from):
        parser.error("--allow-change applies only with --resume or --resume-from")

    # Imported after parsing, so --help is quick.
    from ..data.sources import DataError
    from ..training import ConfigError, TrainingDiverged, TrainingStopped, load_config, train
    from ..training.config import config_path

    allowed = tuple(key.strip() for keys in args.allow_change for key in keys.split(",") if key.strip())
    try:
        config_file = config_path(args.config)
        config = load_config(config_file, args.overrides)
        train(config, resume=args.resume, resume_from=args.resume_from, overwrite=args.overwrite,
              allow_changes=allowed, config_file=str(config_file))
    except (ConfigError, DataError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except TrainingStopped as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing was saved since the newest checkpoint", file=sys.stderr)
        return 130
    from accelerate import PartialState

    from ..training.model_card import saved_model_line

    if PartialState().is_main_process:  # once per launch, not once per process
        print(saved_model_line(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
