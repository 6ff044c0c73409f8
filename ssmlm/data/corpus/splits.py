"""How text becomes documents and documents become splits: the decoding policy, joining a group's pieces into
documents, and assigning whole groups to train, validation or test. Pure functions, testable without downloads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")
TARGET_DOCUMENT_CHARS = 65_536
MIN_PIECE_CHARS = 8_192
# Share of a domain's groups held out for validation and again for test (at least one group each).
HELD_OUT_GROUP_FRACTION = 0.1

TEXT_DECODING_POLICY = (
    "UTF-8 (a leading byte-order mark removed); a piece that is not valid UTF-8 is decoded as Latin-1 and "
    "listed under latin1_decoded_pieces; CRLF and CR line ends become LF"
)


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
