"""Packing: tokenize documents, join them with EOS, and cut the token stream into blocks of `seq_len` tokens; or,
for a task that labels windows of one document, cut each document alone (`window_documents`).

It is one `datasets.map`, so it runs in `num_proc` processes and is cached by datasets' fingerprints (of the
documents, the tokenizer and `seq_len`): a second run with the same inputs reads the blocks back instead of
tokenizing again. Memory is bounded by the batch, not the document: long documents are tokenized in pieces
(`text_pieces`) a bounded number of characters at a time, and the token stream is a numpy array.
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets
import numpy as np
import torch

from .tokenizer import text_pieces

# Documents joined per map batch: the tail of each batch's stream that does not fill a block is dropped.
DOCUMENTS_PER_BATCH = 256
# Characters handed to the tokenizer in one call (pieces of several documents, encoded in parallel).
CHARS_PER_CALL = 1 << 20


def pieces_of(texts: list[str]) -> Iterator[tuple[str, bool]]:
    """(piece, whether it ends its document) for the pieces of every text in turn."""
    for text in texts:
        pieces = text_pieces(text)
        piece = next(pieces)
        for following in pieces:
            yield piece, False
            piece = following
        yield piece, True


def token_stream(texts: list[str], tokenizer) -> Iterator[np.ndarray]:
    """The ids of each text followed by EOS, as arrays, tokenizing about CHARS_PER_CALL characters at a time."""
    eos = np.array([tokenizer.eos_token_id], dtype=np.int32)

    def encode(group, ends):
        for ids, ends_document in zip(tokenizer(group, add_special_tokens=False, verbose=False)["input_ids"], ends):
            yield np.asarray(ids, dtype=np.int32)
            if ends_document:
                yield eos

    group, ends, chars = [], [], 0
    for piece, ends_document in pieces_of(texts):
        group.append(piece)
        ends.append(ends_document)
        chars += len(piece)
        if chars >= CHARS_PER_CALL:
            yield from encode(group, ends)
            group, ends, chars = [], [], 0
    if group:
        yield from encode(group, ends)


def pack_documents(documents: datasets.Dataset, tokenizer, seq_len: int, num_proc: int) -> datasets.Dataset:
    """Blocks of `seq_len` token ids (column "input_ids", torch format) from a Dataset with a "text" column. Stored
    as int32, half the memory and disk of int64; read back as int64 tensors, the index type torch wants."""

    def pack(batch):
        return {"input_ids": blocks_of(np.concatenate(list(token_stream(batch["text"], tokenizer))), seq_len)}

    return map_documents(documents, pack, num_proc, f"Packing into {seq_len}-token blocks")


def blocks_of(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """The whole blocks of `seq_len` in a token stream, (blocks, seq_len); the tail that does not fill one is
    dropped."""
    return ids[:len(ids) - len(ids) % seq_len].reshape(-1, seq_len)


def map_documents(documents: datasets.Dataset, fn, num_proc: int, desc: str) -> datasets.Dataset:
    """`fn` over batches of documents in `num_proc` processes, cached by datasets; the rows it returns replace the
    documents, read back as int64 tensors."""
    rows = documents.map(fn, batched=True, batch_size=DOCUMENTS_PER_BATCH, remove_columns=documents.column_names,
                         num_proc=max(1, min(num_proc, len(documents))), desc=desc)
    return rows.with_format("torch", dtype=torch.int64)


def window_documents(documents: datasets.Dataset, tokenizer, seq_len: int, label: int,
                     num_proc: int) -> datasets.Dataset:
    """Windows of `seq_len` token ids cut from inside each document (none crosses into the next; a document's tail
    shorter than a window is dropped), each with `label` (columns "input_ids" and "labels", torch format)."""

    def cut(batch):
        windows = []
        for text in batch["text"]:
            windows.extend(blocks_of(np.concatenate(list(token_stream([text], tokenizer)))[:-1], seq_len))  # no EOS
        return {"input_ids": windows, "labels": [label] * len(windows)}

    return map_documents(documents, cut, num_proc, f"Cutting {seq_len}-token windows")
