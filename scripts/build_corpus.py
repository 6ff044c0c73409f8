#!/usr/bin/env python
"""Build or verify the books/code/math corpus: `python scripts/build_corpus.py --help`. The same command as
`ssmlm-build-corpus` (the logic is ssmlm/cli/build_corpus.py), with the same exit codes."""

import sys

from ssmlm.cli.build_corpus import main

if __name__ == "__main__":
    sys.exit(main(prog="build_corpus.py"))
