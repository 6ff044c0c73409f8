"""Where transformers releases differ, and the range of releases ssmlm is tested on.

ssmlm uses transformers' public API only; this module holds each place where two releases in the supported range
need different code, each branch naming the release and the reason. CI runs the HF-facing tests on the oldest and
the newest release named here (scripts/test_transformers_range.sh).
"""

import warnings

import transformers
from packaging.version import Version

# The oldest release the HF-facing tests pass on (CI installs it in a venv of its own), and the newest release CI
# has seen; pyproject.toml declares `transformers>=OLDEST,<6`.
OLDEST_SUPPORTED = "5.17.0"
NEWEST_TESTED = "5.25.0"

INSTALLED = Version(transformers.__version__)

# transformers 5.24 renamed the cache argument of forward() and prepare_inputs_for_generation(), and the cache field
# of the model outputs, from `past_key_values` to `cache` (the old name is still accepted, with a deprecation warning).
# Before 5.24 only `past_key_values` exists.
CACHE_ARGUMENT = "cache" if INSTALLED.release >= (5, 24) else "past_key_values"


class UnsupportedTransformersError(ImportError):
    """The installed transformers is older than the oldest release ssmlm supports."""


def check_installed_release() -> None:
    """Refuse a transformers below the supported range at import, in one line; warn once above the tested range."""
    if INSTALLED.release < Version(OLDEST_SUPPORTED).release:
        raise UnsupportedTransformersError(
            f"ssmlm needs transformers >= {OLDEST_SUPPORTED}, but {transformers.__version__} is installed: "
            f"pip install 'transformers>={OLDEST_SUPPORTED},<6'"
        )
    if INSTALLED.release[:2] > Version(NEWEST_TESTED).release[:2]:  # a newer minor release; its patches are fine
        warnings.warn(
            f"ssmlm is tested with transformers {OLDEST_SUPPORTED} to {NEWEST_TESTED}; {transformers.__version__} is "
            f"installed. Generation is checked against the full prefix in ssmlm's test suite: run it "
            f"(pytest -m hf) before trusting this release, or install 'transformers>={OLDEST_SUPPORTED},"
            f"<={NEWEST_TESTED}'.",
            stacklevel=3,
        )


def cache_argument(cache, past_key_values):
    """The cache a forward() was given under either name: `cache` (what generate() passes from transformers 5.24
    on) or `past_key_values` (before 5.24; callers of any release may still use it). A forward names both
    parameters, since generate() refuses arguments its model's forward does not name."""
    if past_key_values is not None and cache is not None:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def returned_cache(output) -> dict:
    """The cache a model output carries, as the keyword argument that hands it back to that model's forward: the
    field's name is the argument's in every release (`cache` from 5.24 on; before it `past_key_values`, and
    `cache_params` for transformers' Mamba)."""
    for name in ("cache", "past_key_values", "cache_params"):
        if name in getattr(output, "__dataclass_fields__", {}):
            return {name: getattr(output, name)}
    raise TypeError(f"{type(output).__name__} carries no cache")


__all__ = ["CACHE_ARGUMENT", "NEWEST_TESTED", "OLDEST_SUPPORTED", "UnsupportedTransformersError", "cache_argument",
           "check_installed_release", "returned_cache"]
