"""`ssmlm-train` from a checkout: `python train.py --help` (the command is ssmlm/cli/train.py)."""

from ssmlm.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main(prog="train.py"))
