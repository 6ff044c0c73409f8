"""Stream a continuation of a prompt from a saved ssmlm model: `python generate.py --help`. The same command as
`ssmlm-generate` (the logic is ssmlm/cli/generate.py), with the same exit codes."""

import sys

from ssmlm.cli.generate import main

if __name__ == "__main__":
    sys.exit(main(prog="generate.py"))
