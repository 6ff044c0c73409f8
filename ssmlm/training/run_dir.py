"""The run directory: known by a marker ssmlm writes, written by one process at a time, replaced only safely.

    output.dir/ssmlm-run.json   the marker: written when a run starts, held locked while a process writes the run

Rules, each tested in tests/test_run_safety.py:
  * A new run goes only into a missing or empty directory.
  * `--overwrite` replaces only a directory that holds the marker, and never one that is the filesystem root, the
    home directory, the working directory or one of its parents, a symbolic link, or a folder holding the run's
    data, config, tokenizer or data cache. It happens only once the whole run has been checked and built.
  * A replaced run is not deleted at once: it is moved beside the new one, to `<dir>.replaced`, and deleted when the
    new run finishes. If the new run fails or is stopped, the old one is still there. A second `--overwrite` of an
    unfinished replacement deletes the unfinished run and keeps the original in `<dir>.replaced`.
  * One writer: the lock is an exclusive `flock` on the marker, which the kernel releases when its process ends,
    however it ends, so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .. import __version__
from .config import ConfigError

MARKER = "ssmlm-run.json"
REPLACED_SUFFIX = ".replaced"


def is_run(path: Path) -> bool:
    return (path / MARKER).is_file()


def read_marker(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def replaced_path(path: Path) -> Path:
    return path.with_name(path.name + REPLACED_SUFFIX)


def check_replaceable(path: Path, protected: Iterable[Path]) -> None:
    """Raise ConfigError unless `--overwrite` may remove the directory `path`."""
    refuse = f"--overwrite: will not delete {path}"
    if path.is_symlink():
        raise ConfigError(f"{refuse}: it is a symbolic link")
    if not path.is_dir():
        raise ConfigError(f"{refuse}: it is not a directory")
    resolved = path.resolve()
    working = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise ConfigError(f"{refuse}: it is {'the filesystem root' if resolved.parent == resolved else 'your home'}")
    if resolved == working or resolved in working.parents:
        raise ConfigError(f"{refuse}: it is the working directory or one of its parents")
    for kept in protected:
        kept_resolved = Path(kept).expanduser().resolve()
        if kept_resolved == resolved or resolved in kept_resolved.parents:
            raise ConfigError(f"{refuse}: it holds {kept}, which this run reads")
    if not is_run(path):
        raise ConfigError(f"{refuse}: it is not an ssmlm run directory (no {MARKER}); choose another output.dir, "
                          f"or delete it yourself if you mean to")


class RunLock:
    """An exclusive, non-blocking flock on a run's marker, held from `acquire` until `release` or process exit."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.handle = None

    def acquire(self) -> RunLock:
        handle = open(self.run_dir / MARKER, "rb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"another process is writing the run in {self.run_dir} (it holds {MARKER} locked); "
                              f"wait for it to end, or choose another output.dir") from None
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the descriptor releases the lock
            self.handle = None


def check_not_busy(run_dir: Path) -> None:
    """Raise ConfigError now if a live process holds the run, rather than after the data has been prepared."""
    if is_run(run_dir):
        RunLock(run_dir).acquire().release()


def write_marker(run_dir: Path, **fields) -> None:
    """Create the marker; fails if there is one already (another run got here first)."""
    try:
        with open(run_dir / MARKER, "x", encoding="utf-8") as handle:
            handle.write(json.dumps({"ssmlm_version": __version__, **fields}) + "\n")
    except FileExistsError:
        raise ConfigError(f"output directory {run_dir} was just taken by another run") from None


def start_run(run_dir: Path, mode: str, protected: Iterable[Path] = ()) -> RunLock:
    """Make `run_dir` this process's run and return its held lock. `mode`: "new" (a missing or empty directory),
    "continue" (resume: an existing run, or a missing or empty directory for a run resumed from elsewhere) or
    "overwrite" (replace an existing run; the old one is kept in `<dir>.replaced` until `finish_run`)."""
    if mode == "overwrite" and not is_empty(run_dir):
        check_replaceable(run_dir, protected)
        replace_run(run_dir)
    elif mode == "continue" and is_run(run_dir):
        return RunLock(run_dir).acquire()
    elif mode == "continue" and (run_dir / "checkpoints").is_dir():
        write_marker(run_dir, adopted=True)  # a run written before ssmlm marked its runs
        return RunLock(run_dir).acquire()
    elif not is_empty(run_dir):
        raise ConfigError(f"output directory {run_dir} already exists; pass --overwrite to replace it, or --resume "
                          f"to continue its latest checkpoint")
    run_dir.mkdir(parents=True, exist_ok=True)
    replacing = mode == "overwrite" and replaced_path(run_dir).exists()
    write_marker(run_dir, **({"replaces": replaced_path(run_dir).name} if replacing else {}))
    return RunLock(run_dir).acquire()


def replace_run(run_dir: Path) -> None:
    """Move the run in `run_dir` aside to `<dir>.replaced`, or delete it if it is itself an unfinished replacement
    of the run kept there."""
    lock = RunLock(run_dir).acquire()  # never while another process writes it
    try:
        kept = replaced_path(run_dir)
        if not kept.exists():
            os.rename(run_dir, kept)
        elif is_run(kept) and read_marker(run_dir).get("replaces") == kept.name:
            shutil.rmtree(run_dir)
        else:
            raise ConfigError(f"--overwrite: {kept} is in the way (the previous run is moved there until the new one "
                              f"finishes); move it or delete it yourself")
    finally:
        lock.release()


def finish_run(run_dir: Path) -> None:
    """The run in `run_dir` is complete: delete the run it replaced, if any."""
    kept = replaced_path(run_dir)
    if read_marker(run_dir).get("replaces") == kept.name and is_run(kept):
        shutil.rmtree(kept)


def readable_by_all(directory: Path) -> None:
    """Give the files in `directory` the mode the umask gives new files: some writers (safetensors) use 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(0o666 & ~umask)
