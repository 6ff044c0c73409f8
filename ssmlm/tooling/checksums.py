"""Files recorded by size and SHA-256, and checked against that record: the file list of a checkpoint's
trainer_state.json (training/checkpoints.py) and a saved model's ssmlm-files.json (saved_models.py).

A record is {relative path: {"size": bytes, "sha256": hex digest}}; a file the record does not name is not checked."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..data.corpus import sha256_file


def record_files(root: Path, names: Iterable[str]) -> dict[str, dict]:
    """The record of the files `names` (paths relative to `root`)."""
    return {name: {"size": (root / name).stat().st_size, "sha256": sha256_file(root / name)} for name in sorted(names)}


def is_record(files) -> bool:
    """Whether `files` has the shape of a record, every path relative and inside its root."""
    return isinstance(files, dict) and all(
        isinstance(entry, dict) and type(entry.get("size")) is int and isinstance(entry.get("sha256"), str)
        and bool(Path(name).parts) and not Path(name).is_absolute() and ".." not in Path(name).parts
        for name, entry in files.items())


def first_difference(root: Path, files: dict[str, dict]) -> str | None:
    """How the files under `root` first differ from their record `files`, in a few words naming the file; None if
    every one is there with its size and hash."""
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, not {expected['size']}"
        if sha256_file(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None
