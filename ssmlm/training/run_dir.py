"""The run directory: known by a marker ssmlm writes, written by one process at a time, replaced only safely.

    output.dir/ssmlm-run.json   the marker: {"id", "ssmlm_version", "replaces"?}, written when a run starts and held
                                locked while a process writes the run

Rules, each tested in tests/test_run_safety.py:
  * A new run goes only into a missing or empty directory.
  * `--overwrite` replaces only a directory that holds the marker, and never one that is the filesystem root, the
    home directory, the working directory or one of its parents, a symbolic link, a mount point, or a folder
    holding the run's data, config, tokenizer or data cache. It happens only once the whole run has been checked
    and built.
  * A replaced run is not deleted at once: it is moved beside the new one, to `<dir>.replaced`, and deleted when the
    new run finishes, if it is still the run that was moved there (the marker's id says) and no process writes it.
    If the new run fails or is stopped, the old one is still there. A second `--overwrite` of an unfinished
    replacement deletes the unfinished run and keeps the original in `<dir>.replaced`.
  * One writer: the lock is an exclusive `flock` on the marker, which the kernel releases when its process ends,
    however it ends, so a crashed run never leaves a stale lock. A new marker is created, locked and only then
    written, so no other process can take a run between its creation and its lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from .. import __version__
from ..model.legacy import is_legacy_run
from .config import ConfigError

MARKER = "ssmlm-run.json"
REPLACED_SUFFIX = ".replaced"


def is_run(path: Path) -> bool:
    return (path / MARKER).is_file()


def read_marker(path: Path) -> dict:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def is_empty(path: Path) -> bool:
    return not path.exists() and not path.is_symlink() or (path.is_dir() and not any(path.iterdir()))


def replaced_path(path: Path) -> Path:
    return path.with_name(path.name + REPLACED_SUFFIX)


def free_path(path: Path) -> Path:
    """`path`, or `path` with .2, .3, ... appended if it is taken."""
    candidate, number = path, 2
    while candidate.exists() or candidate.is_symlink():
        candidate, number = path.with_name(f"{path.name}.{number}"), number + 1
    return candidate


def check_writable(path: Path) -> None:
    """Raise ConfigError unless the directory `path` exists and can be written, or can be created."""
    existing = path
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise ConfigError(f"output.dir: {existing} is a symbolic link to nothing")
    if not existing.is_dir():
        raise ConfigError(f"output.dir: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir: cannot write in {existing}")


def check_replaceable(path: Path, protected: Iterable[Path]) -> None:
    """Raise ConfigError unless `--overwrite` may move the directory `path` aside and later delete it."""
    refuse = f"--overwrite: will not delete {path}"
    if path.is_symlink():
        raise ConfigError(f"{refuse}: it is a symbolic link")
    if not path.is_dir():
        raise ConfigError(f"{refuse}: it is not a directory")
    resolved = path.resolve()
    working = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        raise ConfigError(f"{refuse}: it is the filesystem root")
    if resolved == Path.home().resolve():
        raise ConfigError(f"{refuse}: it is your home")
    if resolved == working or resolved in working.parents:
        raise ConfigError(f"{refuse}: it is the working directory or one of its parents")
    if os.path.ismount(resolved):
        raise ConfigError(f"{refuse}: it is a mount point")
    for kept in protected:
        kept_resolved = Path(kept).expanduser().resolve()
        if kept_resolved == resolved or resolved in kept_resolved.parents:
            raise ConfigError(f"{refuse}: it holds {kept}, which this run reads")
    if not is_run(path):
        raise ConfigError(f"{refuse}: it is not an ssmlm run directory (no {MARKER}); choose another output.dir, "
                          f"or delete it yourself if you mean to")
    kept = replaced_path(path)
    if (kept.exists() or kept.is_symlink()) and not is_unfinished_replacement(path):
        raise ConfigError(f"--overwrite: {kept} is in the way (the previous run is moved there until the new one "
                          f"finishes); move it or delete it yourself")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{refuse}: cannot write in {path.parent}, where the old run is kept until the new one "
                          f"finishes")


def is_unfinished_replacement(path: Path) -> bool:
    """Whether the run in `path` was started by --overwrite and the run it replaces still waits in `<dir>.replaced`."""
    kept = replaced_path(path)
    replaces = read_marker(path).get("replaces")
    return (not kept.is_symlink() and is_run(kept) and isinstance(replaces, dict)
            and replaces.get("id") is not None and replaces.get("id") == read_marker(kept).get("id"))


class RunLock:
    """A flock on a run's marker: exclusive from `acquire` (or `create`) until `release` or process exit for the
    writer of the run; shared, and at once released, for a process that only checks that nobody writes it (the
    ranks of one launch check at the same moment, and must not see each other as writers)."""

    def __init__(self, run_dir: Path, handle=None):
        self.run_dir = run_dir
        self.handle = handle

    def acquire(self, shared: bool = False) -> RunLock:
        handle = open(self.run_dir / MARKER, "rb")
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"another process is writing the run in {self.run_dir} (it holds {MARKER} locked); "
                              f"wait for it to end, or choose another output.dir") from None
        self.handle = handle
        return self

    @classmethod
    def create(cls, run_dir: Path, **fields) -> RunLock:
        """Create the marker of a new run, locked before anything is in it; fails if there is one already."""
        try:
            handle = open(run_dir / MARKER, "x", encoding="utf-8")
        except FileExistsError:
            raise ConfigError(f"output directory {run_dir} was just taken by another run") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can have the new file open yet
            handle.write(json.dumps({"id": uuid.uuid4().hex, "ssmlm_version": __version__, **fields}) + "\n")
            handle.flush()
        except BaseException:
            handle.close()
            raise
        return cls(run_dir, handle)

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the descriptor releases the lock
            self.handle = None


def check_not_busy(run_dir: Path) -> None:
    """Raise ConfigError now if a live process writes the run, rather than after the data has been prepared."""
    if is_run(run_dir):
        RunLock(run_dir).acquire(shared=True).release()


def start_run(run_dir: Path, mode: str, protected: Iterable[Path] = ()) -> RunLock:
    """Make `run_dir` this process's run and return its held lock. `mode`: "new" (a missing or empty directory),
    "continue" (resume: an existing run, or a missing or empty directory for a run resumed from elsewhere) or
    "overwrite" (replace an existing run; the old one is kept in `<dir>.replaced` until `finish_run`)."""
    replaces = None
    if mode == "overwrite" and not is_empty(run_dir):
        check_replaceable(run_dir, protected)
        replaces = replace_run(run_dir)
    elif mode == "continue" and is_run(run_dir):
        return RunLock(run_dir).acquire()
    elif mode == "continue" and is_legacy_run(run_dir):
        return RunLock.create(run_dir, adopted=True)
    elif not is_empty(run_dir):
        raise ConfigError(f"output directory {run_dir} already exists; pass --overwrite to replace it, or --resume "
                          f"to continue its latest checkpoint")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return RunLock.create(run_dir, **({"replaces": replaces} if replaces else {}))
    except OSError:
        abandon_start(run_dir, mode, replaced=replaces is not None)
        raise


def abandon_start(run_dir: Path, mode: str, replaced: bool) -> None:
    """Undo what `start_run(run_dir, mode)` and the run's first files did, after a write failed (a full disk): the
    new run's files are deleted (its directory was missing or empty, or held the run it `replaced`, which is moved
    back from `<dir>.replaced`), so that the same command works once the problem is fixed. A resumed run keeps its
    files: its marker and checkpoints were there before."""
    if mode == "continue" or run_dir.is_symlink() or not run_dir.is_dir():
        return
    if replaced:
        shutil.rmtree(run_dir)
        os.rename(replaced_path(run_dir), run_dir)
        return
    for path in run_dir.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def replace_run(run_dir: Path) -> dict:
    """Move the run in `run_dir` aside to `<dir>.replaced`, or delete it if it is itself an unfinished replacement
    of the run kept there; return what the new run replaces ({"path", "id"} of the kept run)."""
    lock = RunLock(run_dir).acquire()  # never while another process writes it
    try:
        kept = replaced_path(run_dir)
        if is_unfinished_replacement(run_dir):
            shutil.rmtree(run_dir)
        else:
            os.rename(run_dir, kept)
    finally:
        lock.release()
    return {"path": kept.name, "id": read_marker(kept).get("id")}


def finish_run(run_dir: Path) -> str | None:
    """The run in `run_dir` is complete: delete the run it replaced, if that is still in `<dir>.replaced` and
    nobody writes it. Returns a warning when it is left where it is."""
    if not is_unfinished_replacement(run_dir):
        return None
    kept = replaced_path(run_dir)
    try:
        lock = RunLock(kept).acquire()
    except ConfigError:
        return f"warning: {kept}, the run this one replaced, is being written by another process: not deleted"
    try:
        shutil.rmtree(kept)
    finally:
        lock.release()
    return None


def readable_by_all(directory: Path) -> None:
    """Give the files in `directory` the mode the umask gives new files: some writers (safetensors) use 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(0o666 & ~umask)
