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


# Long texts are tokenized in pieces of at most this many characters: a fast tokenizer holds many times its input's
# size in memory while it works, so a large document in one call could exhaust the machine's memory.
PIECE_CHARS = 1 << 16


def text_pieces(text: str, max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """`text` as consecutive pieces of at most `max_chars` characters, each (but the first) starting with a space
    that follows a non-space character. Byte-level BPE and SentencePiece (Metaspace) both end a pre-token there,
    so the pieces encode to exactly the ids of the whole text. A stretch of `max_chars` characters with no such
    space (a base64 blob, say) is cut where it ends: the one place where the ids may differ."""
    start = 0
    while len(text) - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        while cut > start and text[cut - 1].isspace():
            cut = text.rfind(" ", start + 1, cut)
        if cut <= start:
            cut = start + max_chars
        yield text[start:cut]
        start = cut
    yield text[start:]


def sample_texts(train_sets: dict[str, datasets.Dataset], total_chars: int) -> Iterator[str]:
    """Documents from every domain in turn, up to an equal share of `total_chars` each, in pieces."""
    share = total_chars // len(train_sets)
    for documents in train_sets.values():
        remaining = share
        for batch in documents.iter(batch_size=64):
            for text in batch["text"]:
                yield from text_pieces(text[:remaining])
                remaining -= min(len(text), remaining)
                if remaining == 0:
                    break
            if remaining == 0:
                break


def looks_like_a_path(name: str) -> bool:
    """True for what is not meant as a Hub repository id ("name" or "namespace/name"): paths that start with "/",
    "." or "~", have more than one "/", or whose first part exists here ("runs/gss-smal"). A missing one is then
    reported at once, not after the Hub has been tried."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
            or "/" in name and Path(name.split("/")[0]).exists())


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    if not Path(name_or_path).exists() and looks_like_a_path(name_or_path):
        raise DataError(f"tokenizer.path: no such directory: {name_or_path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise DataError(f"tokenizer.path: cannot load a tokenizer from {name_or_path!r} "
                        f"({' '.join(str(error).split())[:300]})") from None
    return tokenizer_for_packing(tokenizer, f"tokenizer.path: {name_or_path!r}")


def tokenizer_for_packing(tokenizer: PreTrainedTokenizerBase, what: str) -> PreTrainedTokenizerBase:
    """`tokenizer`, if it has the end-of-text token packing puts between documents; `what` names it in the error."""
    if tokenizer.eos_token_id is None:
        raise DataError(f"{what} has no end-of-text token; packing needs one between documents")
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
        too_small = (f"tokenizer.vocab_size: {tokenizer_config.vocab_size} cannot hold the distinct characters of "
                     f"the training text and the {len(SPECIAL_TOKENS)} special tokens")
        try:
            tokenizer = train_tokenizer(sample_texts(train_sets, tokenizer_config.training_chars),
                                        tokenizer_config.kind, tokenizer_config.vocab_size)
        except Exception as error:  # the Unigram trainer's own words for it
            if "not large enough to contain all chars" in str(error):
                raise DataError(f"{too_small}; raise it") from None
            raise
        if len(tokenizer) > tokenizer_config.vocab_size:  # SentencePiece BPE grows to the alphabet silently
            raise DataError(f"{too_small}: it would need {len(tokenizer)}")
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
