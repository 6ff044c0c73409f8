"""`ssmlm-generate` from a checkout: `python generate.py --help` (the command is ssmlm/cli/generate.py)."""

from ssmlm.cli.generate import main

if __name__ == "__main__":
    raise SystemExit(main(prog="generate.py"))
