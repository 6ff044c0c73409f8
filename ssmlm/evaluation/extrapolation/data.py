"""Evaluation data: documents → tokens with the UTF-8 bytes each one covers → L-token windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...data.sources import DataError, is_local, load_split
from ...tooling.saved_models import UsageError
from .. import DEFAULT_HUB_SPLIT, HUB_PREFIX

SAMPLE_SEED = 0  # which documents --max-documents keeps: the same for every model that shares a tokenizer
TOKENIZE_BATCH = 64


@dataclass(frozen=True)
class DataSpec:
    domain: str
    source: str  # a local file or glob, or "hub:NAME[:split]"


def parse_data_spec(text: str) -> DataSpec:
    domain, separator, source = text.partition("=")
    if not separator or not domain or not source:
        raise UsageError(f"--data {text!r}: expected DOMAIN=PATH or DOMAIN=hub:NAME[:split], e.g. "
                         f"books=data/corpus/books/test.jsonl")
    return DataSpec(domain, source)


def load_texts(spec: DataSpec, text_column: str, cache_dir: str) -> list[str]:
    """The non-empty documents of one --data spec, through the training pipeline's loader."""
    key = f"--data {spec.domain}"
    if spec.source.startswith(HUB_PREFIX):
        name, _, split = spec.source.removeprefix(HUB_PREFIX).partition(":")
        source = f"{name}:{split or DEFAULT_HUB_SPLIT}"
    else:
        source = spec.source
        if not is_local(source):  # the loader would take it for a Hub name; the user meant a file
            raise DataError(f"{key}: data file not found: {source} (Hub datasets are written hub:NAME[:split])")
    documents = load_split(source, DEFAULT_HUB_SPLIT, cache_dir=str(Path(cache_dir).expanduser() / "datasets"),
                           seed=SAMPLE_SEED, key=key, text_column=text_column)
    return list(documents["text"])


@dataclass
class TokenizedDocument:
    ids: np.ndarray  # int64 token ids, no special tokens (as training tokenizes)
    token_bytes: np.ndarray  # UTF-8 bytes of text each token covers: from the previous token's end to its own


def utf8_prefix_bytes(text: str) -> np.ndarray:
    """(len(text) + 1,): UTF-8 bytes of text[:i] for every character offset i."""
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    sizes = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    return np.concatenate([[0], np.cumsum(sizes)])


def tokenize(tokenizer, texts: list[str]) -> list[TokenizedDocument]:
    documents = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        batch = texts[start:start + TOKENIZE_BATCH]
        encoded = tokenizer(batch, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for text, ids, offsets in zip(batch, encoded["input_ids"], encoded["offset_mapping"]):
            # Tokens that split one character share its offsets; the running maximum keeps the ends in order,
            # so each character's bytes are counted once.
            ends = np.maximum.accumulate(np.array([end for _, end in offsets], dtype=np.int64))
            byte_ends = utf8_prefix_bytes(text)[ends]
            documents.append(TokenizedDocument(np.array(ids, dtype=np.int64), np.diff(byte_ends, prepend=0)))
    return documents


@dataclass
class Window:
    ids: torch.Tensor  # (L + 1,): the start token, then the L tokens that are scored
    token_bytes: torch.Tensor  # (L,): UTF-8 bytes of each scored token's text


@dataclass
class WindowSet:
    length: int
    windows: list[Window]
    qualifying: int  # documents with at least L tokens (windows in the concatenated stream)
    document_indices: list[int] | None  # which documents the windows start (None when concatenated)


def sample(count: int, max_count: int | None) -> list[int]:
    """Indices of at most `max_count` of `count` items: all of them, or a seeded random subset in order."""
    if max_count is None or count <= max_count:
        return list(range(count))
    return sorted(np.random.default_rng(SAMPLE_SEED).choice(count, max_count, replace=False).tolist())


def document_windows(documents: list[TokenizedDocument], length: int, start_token: int,
                     max_documents: int | None) -> WindowSet:
    """The first `length` tokens of each document that has that many."""
    qualifying = [index for index, document in enumerate(documents) if len(document.ids) >= length]
    chosen = [qualifying[i] for i in sample(len(qualifying), max_documents)]
    windows = [
        Window(torch.from_numpy(np.concatenate([[start_token], documents[index].ids[:length]])),
               torch.from_numpy(documents[index].token_bytes[:length]))
        for index in chosen
    ]
    return WindowSet(length, windows, len(qualifying), chosen)


def concatenated_windows(documents: list[TokenizedDocument], length: int, separator: int,
                         max_windows: int | None) -> WindowSet:
    """Consecutive `length`-token windows of all documents joined into one stream, each preceded by `separator`
    (which is then scored too: the model must predict a document's end). Windows span document boundaries."""
    ids = np.concatenate([part for document in documents for part in ([separator], document.ids)])
    token_bytes = np.concatenate([part for document in documents for part in ([0], document.token_bytes)])
    starts = range(0, len(ids) - length, length)  # window k reads ids[s .. s+L-1] and scores ids[s+1 .. s+L]
    chosen = [starts[i] for i in sample(len(starts), max_windows)]
    windows = [Window(torch.from_numpy(ids[start:start + length + 1]),
                      torch.from_numpy(token_bytes[start + 1:start + length + 1])) for start in chosen]
    return WindowSet(length, windows, len(starts), None)
