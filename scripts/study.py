#!/usr/bin/env python
"""The study of the papers' claims: every model of a plan trained on the same tokens, evaluated at 1x..16x its
training length and timed, with one report. `python scripts/study.py --help`, the same command as `ssmlm-study`, with
the same exit codes; docs/study.md explains it."""

import sys

from ssmlm.cli.study import main

if __name__ == "__main__":
    sys.exit(main(prog="study.py"))
