"""The study: every small config trained on the same tokens, evaluated at 1x-16x its training length and timed, with
one row per paper claim (`ssmlm-study`; docs/study.md)."""
