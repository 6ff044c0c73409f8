"""The study: every small config trained on the same tokens, evaluated at 1x-16x its training length and timed, with
one row per paper claim (`ssmlm-study`; the README's study section)."""

# The phases of a study, in their order (runner.py runs them). Here, free of torch, for `ssmlm-study --help`.
PHASES = ("sweep", "train", "evaluate", "time", "report")
