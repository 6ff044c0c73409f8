"""Evaluation: per-position losses in the window and streaming regimes (perplexity.py) and the length-
extrapolation experiment behind scripts/eval_length.py (extrapolation.py)."""
