"""Evaluation: per-position losses in the window and streaming regimes (perplexity.py) and the length-
extrapolation experiment behind `ssmlm-eval-length` (the extrapolation package).

The names below are the command line's too, and free of torch, for its --help."""

REGIMES = ("window", "streaming")
MIN_STREAM_CHUNKS = 5  # the streaming regime reads every window in at least this many chunks
HUB_PREFIX = "hub:"
DEFAULT_HUB_SPLIT = "test"
# The defaults of what a user may leave out, for the command line and the study alike.
DEFAULT_STREAM_CHUNK = 2048
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_CACHE_DIR = "~/.cache/ssmlm"  # datasets' caches, as training's


def default_baseline_stride(context: int) -> int:
    """The truncated baseline scores a piece of a quarter of its context at a time."""
    return max(1, context // 4)
