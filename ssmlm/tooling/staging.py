"""Writing a folder whole or not at all: the corpus builders' one way of replacing their output."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Result = TypeVar("Result")


def build_in_place(out: Path, write: Callable[[Path], Result]) -> Result:
    """`write(folder)` into a temporary folder beside `out`, renamed to `out` once it returns: a failed or
    interrupted build (Ctrl-C too) leaves no `out` behind, and an earlier `out` is replaced only by a complete one.
    The caller checks first that `out` may be replaced. Returns what `write` returned."""
    created = next((path for path in reversed(out.parents) if not path.exists()), None)  # the top folder we make
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    replaced = out.parent / f".{out.name}.replaced-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
        result = write(staging)
        if out.exists():
            os.replace(out, replaced)  # deleted once the new one is in place
        os.replace(staging, out)
    except BaseException:  # a failure or Ctrl-C: leave nothing half-built
        shutil.rmtree(created or staging, ignore_errors=True)
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    return result
