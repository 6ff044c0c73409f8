"""Packing: tokenize documents, join them with EOS, and cut the token stream into blocks of `seq_len` tokens.

It is one `datasets.map`, so it runs in `num_proc` processes and is cached by datasets' fingerprints (of the
documents, the tokenizer and `seq_len`): a second run with the same inputs reads the blocks back instead of
tokenizing again.
"""

from __future__ import annotations

import datasets

# Documents joined per map batch: the tail of each batch's stream that does not fill a block is dropped.
DOCUMENTS_PER_BATCH = 256


def pack_documents(documents: datasets.Dataset, tokenizer, seq_len: int, num_proc: int) -> datasets.Dataset:
    """Blocks of `seq_len` token ids (column "input_ids", torch format) from a Dataset with a "text" column."""
    eos = tokenizer.eos_token_id

    def pack(batch):
        stream = []
        for ids in tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        usable = len(stream) - len(stream) % seq_len
        return {"input_ids": [stream[start:start + seq_len] for start in range(0, usable, seq_len)]}

    blocks = documents.map(
        pack,
        batched=True,
        batch_size=DOCUMENTS_PER_BATCH,
        remove_columns=documents.column_names,
        num_proc=max(1, min(num_proc, len(documents))),
        desc=f"Packing into {seq_len}-token blocks",
    )
    return blocks.with_format("torch")
