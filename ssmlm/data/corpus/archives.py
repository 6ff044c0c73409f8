"""Generic readers of the archive formats the inputs come in: sdists (tar.gz), .deb files (an ar archive holding
data.tar.xz), R lazy-load databases (.rdb) and R's serialisation of a character vector. A .deb is read with
`tarfile` and `lzma` (no dpkg).
"""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path


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
