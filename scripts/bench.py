#!/usr/bin/env python
"""Benchmark GSS, Mega-chunk, the hybrids and every SSM kernel against transformers' Llama: training tokens/s,
peak memory, generation prefill and ms per token, model FLOPs utilisation; JSON and markdown output, and a
regression check against a saved run; and Mega-chunk against full-attention Mega (`mega-chunk`).
`python scripts/bench.py --help`, the same command as `ssmlm-bench`, with the same exit codes; docs/benchmarks.md
explains the figures, ssmlm/benchmark/ holds the logic."""

import sys

from ssmlm.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench.py"))
