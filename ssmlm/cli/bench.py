"""`ssmlm-bench`: the benchmark against transformers' Llama (the logic is ssmlm/benchmark/; docs/benchmarks.md
explains the figures). Its peak-memory measurements start this module in fresh processes."""

import sys

from ..benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
