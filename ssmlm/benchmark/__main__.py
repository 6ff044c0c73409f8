"""`python -m ssmlm.benchmark`: the command line of scripts/bench.py, as the peak-memory processes start it."""

import sys

from .cli import main

sys.exit(main())
