"""Evaluation: per-position losses in the window and streaming regimes (perplexity.py) and the length-
extrapolation experiment behind `ssmlm-eval-length` (the extrapolation package).

The names below are the command line's too, and free of torch, for its --help."""

REGIMES = ("window", "streaming")
MIN_STREAM_CHUNKS = 5  # the streaming regime reads every window in at least this many chunks
HUB_PREFIX = "hub:"
DEFAULT_HUB_SPLIT = "test"
