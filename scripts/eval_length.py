#!/usr/bin/env python
"""Length extrapolation, the GSS paper's Figure 9: perplexity of saved models at 1x..16x their training length, by
position in the context, in the convolutional (window) and streaming (recurrent) regimes; JSON, markdown and a
plot. `python scripts/eval_length.py --help`, the same command as `ssmlm-eval-length`, with the same exit codes;
docs/eval_length.md explains the regimes and the outputs."""

import sys

from ssmlm.cli.eval_length import main

if __name__ == "__main__":
    sys.exit(main(prog="eval_length.py"))
