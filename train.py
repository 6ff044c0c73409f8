"""Train an ssmlm model from a YAML config; see `python train.py --help`.

    python train.py                                          # configs/gss-small.yaml on the default corpus
    python train.py --config configs/gss-small.yaml training.max_steps=100 output.dir=runs/try
    python train.py --config ... --resume                    # continue from the latest complete checkpoint
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ...
"""

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "gss-small.yaml"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description="Train an ssmlm model from a YAML config.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="FILE",
                        help="YAML training config (default: configs/gss-small.yaml)")
    run = parser.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest complete checkpoint in output.dir")
    run.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint directory")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output.dir")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. training.max_steps=100 model.hidden_size=128")
    args = parser.parse_args(argv)

    # Imported after parsing, so --help is instant.
    from ssmlm.data.sources import DataError
    from ssmlm.training import ConfigError, load_config, train

    try:
        config = load_config(args.config, args.overrides)
        train(config, resume=args.resume, resume_from=args.resume_from, overwrite=args.overwrite)
    except (ConfigError, DataError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
