"""Tokenizers: trained on the training split with the `tokenizers` library, or an existing one loaded by name.

Three kinds, all saved as Hugging Face tokenizer files (tokenizer.json + tokenizer_config.json) that
`AutoTokenizer.from_pretrained` loads:
  * "byte_bpe": byte-level BPE (GPT-2 style): every byte sequence encodes, nothing is ever unknown;
  * "sentencepiece_bpe" and "sentencepiece_unigram": SentencePiece's BPE and Unigram models (Metaspace
    pre-tokenization, "▁" for spaces), as the `tokenizers` library implements them.
A trained tokenizer is cached under `cache_dir/tokenizers/`, keyed by the training data and the settings, so a
second run loads it instead of training again (and the packed data, keyed by the tokenizer, is reused too).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets
from datasets.fingerprint import Hasher
from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer, SentencePieceUnigramTokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .sources import DataError

SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",  # also what packing puts between documents
    "pad_token": "<|pad|>",
    "unk_token": "<|unk|>",
}


def train_tokenizer(texts: Iterator[str], kind: str, vocab_size: int) -> PreTrainedTokenizerFast:
    specials = list(SPECIAL_TOKENS.values())
    if kind == "byte_bpe":
        backend = ByteLevelBPETokenizer(add_prefix_space=False)
        backend.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    elif kind == "sentencepiece_bpe":
        backend = SentencePieceBPETokenizer(unk_token=SPECIAL_TOKENS["unk_token"])
        backend.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    elif kind == "sentencepiece_unigram":
        backend = SentencePieceUnigramTokenizer()
        backend.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=specials,
                                    unk_token=SPECIAL_TOKENS["unk_token"], show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend._tokenizer,  # the `tokenizers.Tokenizer` inside the implementation wrapper
        model_input_names=["input_ids", "attention_mask"],  # the model takes no token_type_ids
        **SPECIAL_TOKENS,
    )


def sample_texts(train_sets: dict[str, datasets.Dataset], total_chars: int) -> Iterator[str]:
    """Documents from every domain in turn, up to an equal share of `total_chars` each."""
    share = total_chars // len(train_sets)
    for documents in train_sets.values():
        remaining = share
        for batch in documents.iter(batch_size=64):
            for text in batch["text"]:
                yield text[:remaining]
                remaining -= min(len(text), remaining)
                if remaining == 0:
                    break
            if remaining == 0:
                break


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise DataError(f"tokenizer.path: cannot load a tokenizer from {name_or_path!r} "
                        f"({' '.join(str(error).split())[:300]})") from None
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer.path: {name_or_path!r} has no end-of-text token; packing needs one between "
                        f"documents")
    return tokenizer


def get_tokenizer(tokenizer_config, train_sets: dict[str, datasets.Dataset], cache_dir: str | os.PathLike):
    """The configured tokenizer: loaded from `tokenizer.path`, else trained on `train_sets` (or reused from cache)."""
    if tokenizer_config.path:
        return load_tokenizer(tokenizer_config.path)
    key = Hasher.hash([sorted((domain, documents._fingerprint) for domain, documents in train_sets.items()),
                       tokenizer_config.kind, tokenizer_config.vocab_size, tokenizer_config.training_chars])
    name = f"{tokenizer_config.kind}-{tokenizer_config.vocab_size}-{key}"
    directory = Path(cache_dir).expanduser() / "tokenizers" / name
    if not (directory / "tokenizer.json").exists():
        tokenizer = train_tokenizer(sample_texts(train_sets, tokenizer_config.training_chars), tokenizer_config.kind,
                                    tokenizer_config.vocab_size)
        directory.parent.mkdir(parents=True, exist_ok=True)
        # Save beside the target and rename, so a reader never sees a half-written tokenizer.
        scratch = tempfile.mkdtemp(dir=directory.parent, prefix=".tmp-")
        tokenizer.save_pretrained(scratch)
        try:
            os.replace(scratch, directory)
        except OSError:  # another process finished first
            shutil.rmtree(scratch)
    # Always the copy from disk: the packed-data cache is keyed by the tokenizer, and must match on every run.
    return AutoTokenizer.from_pretrained(directory)
