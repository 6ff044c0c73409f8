"""`ssmlm-eval-length`: length extrapolation, the GSS paper's Figure 9 (the logic is ssmlm/evaluation/extrapolation.py;
docs/eval_length.md explains the regimes and the outputs)."""

import sys

from ..evaluation.extrapolation import main

if __name__ == "__main__":
    sys.exit(main())
