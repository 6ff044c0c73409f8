"""Data: local files and Hub names through the same keys, clear errors on bad input, tokenizers, cached packing."""

import functools
import itertools
import json
from pathlib import Path

import datasets
import pytest
import torch
from fixtures.tiny_corpus import TEXT_DIR, write_tiny_corpus

from ssmlm.data import packing, sources, tokenizer as tokenizers
from ssmlm.data.sources import DataError, load_split
from ssmlm.training.config import DataConfig, SourceConfig, TokenizerConfig, load_config
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("datasets-cache"))


def load(cache_dir, train, validation="unused.txt", **settings):
    source = SourceConfig(train=train, validation=validation, **settings)
    return load_split(source.train, "train", cache_dir=cache_dir, seed=0, key="data.sources.books.train",
                      text_column=source.text_column, max_documents=source.max_documents,
                      hub_config=source.hub_config, streaming=source.streaming)


def load_error(cache_dir, train, **settings) -> str:
    with pytest.raises(DataError) as caught:
        load(cache_dir, train, **settings)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------------------------
# Sources


def test_text_files_are_one_document_each_and_globs_expand(cache_dir):
    documents = load(cache_dir, str(TEXT_DIR / "books_*.txt"))
    assert len(documents) == 3
    assert documents[0]["text"] == (TEXT_DIR / "books_bierce_devils_dictionary.txt").read_text(encoding="utf-8")


def test_jsonl_records_are_documents(corpus, cache_dir):
    path = corpus / "code" / "train.jsonl"
    documents = load(cache_dir, [str(path)])
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert documents["text"] == [record["text"] for record in records]
    assert documents.column_names == ["text"]


def test_text_column_and_max_documents(tmp_path, cache_dir):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": f"document {i}"}) + "\n" for i in range(10)))
    sample = load(cache_dir, str(path), text_column="body", max_documents=4)
    assert len(sample) == 4 and set(sample["text"]) < {f"document {i}" for i in range(10)}
    assert load(cache_dir, str(path), text_column="body", max_documents=4)["text"] == sample["text"]  # seeded
    assert "have no 'text' field (they have body); set text_column" in load_error(cache_dir, str(path))


def test_missing_empty_and_non_utf8_files_are_named(tmp_path, cache_dir):
    missing = tmp_path / "missing.jsonl"
    assert load_error(cache_dir, str(missing)) == f"data.sources.books.train: data file not found: {missing}"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert load_error(cache_dir, str(empty)) == f"data.sources.books.train: data file is empty: {empty}"
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    assert load_error(cache_dir, str(blank)) == f"data.sources.books.train: data file is empty: {blank}"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Ein schöner Tag\n".encode("latin-1"))
    assert load_error(cache_dir, str(latin1)) == (
        f"data.sources.books.train: {latin1} is not valid UTF-8 (invalid start byte near byte 7)")
    assert "no file matches" in load_error(cache_dir, str(tmp_path / "*.json"))
    assert load_error(cache_dir, str(tmp_path)).startswith(f"data.sources.books.train: {tmp_path} is not a file")
    table = tmp_path / "table.csv"
    table.write_text("a,b\n")
    assert "table.csv: unsupported file type; expected .txt, .text, .jsonl, .json" in load_error(cache_dir, str(table))


def test_an_entry_of_a_list_of_files_that_does_not_exist_is_named(corpus, tmp_path, cache_dir):
    present = str(corpus / "books" / "train.jsonl")
    assert load_error(cache_dir, [present, str(tmp_path / "notes")]) == (
        f"data.sources.books.train: not found: {tmp_path / 'notes'} (a list holds local files; a Hub dataset is "
        f"given alone)")


def test_validation_data_that_is_also_training_data_is_reported(corpus):
    books, code = str(corpus / "books" / "train.jsonl"), str(corpus / "code" / "train.jsonl")
    data = DataConfig(sources={"books": SourceConfig(train=[books, code], validation=books),
                               "code": SourceConfig(train=code, validation=str(corpus / "code" / "validation.jsonl"))})
    assert sources.shared_files(data) == [
        f"warning: data.sources.books: {Path(books).resolve()} is in both train and validation; the validation loss "
        f"will not show overfitting"]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_hub_name_offline_says_how_to_use_local_files(streaming, cache_dir):
    message = load_error(cache_dir, "emozilla/pg19", streaming=streaming, max_documents=10)
    assert message.startswith("data.sources.books.train: 'emozilla/pg19' is not a local .txt/.jsonl file, "
                              "and loading it as a Hugging Face Hub dataset failed (")
    assert "Couldn't reach 'emozilla/pg19' on the Hub" in message
    assert "Without the Hub, point it at local .txt/.jsonl files instead" in message
    assert "\n" not in message


def test_local_or_hub_is_decided_by_the_value(tmp_path):
    assert sources.is_local("data/corpus/books/train.jsonl")  # even before it exists: a missing file, not a Hub name
    assert sources.is_local("corpus/*/train.txt")
    assert not sources.is_local("emozilla/pg19")
    assert not sources.is_local("codeparrot/codeparrot-clean-valid:train")


def own_data_overrides(corpus: Path) -> list[str]:
    """Every source of the shipped configs pointed at the user's own files (here the tiny corpus)."""
    return [f"data.sources.{domain}.{split}={corpus / domain / f'{split}.jsonl'}"
            for domain in ("books", "code", "math") for split in ("train", "validation")]


def test_the_default_corpus_is_built_only_while_a_source_reads_from_it(corpus, cache_dir, tmp_path, monkeypatch):
    """Every shipped config sets data.build_corpus; a run on the user's own files must neither build the default
    corpus nor need it."""
    monkeypatch.chdir(tmp_path)  # where the shipped configs' relative data/corpus would be built
    shipped = load_config("gss-small").data
    assert shipped.build_corpus == "data/corpus" and sources.reads_default_corpus(shipped)
    own = load_config("gss-small", own_data_overrides(corpus) + [f"data.cache_dir={cache_dir}"]).data
    assert not sources.reads_default_corpus(own)
    # One source left on the default corpus still needs it, however its path is spelled.
    for spec in ("data/corpus/books/validation.jsonl", str(tmp_path / "data/corpus/*/validation.jsonl"),
                 "./data/./corpus/books/validation.jsonl"):
        mixed = load_config("gss-small", own_data_overrides(corpus) + [f"data.sources.books.validation={spec}"])
        assert sources.reads_default_corpus(mixed.data), spec
    # A folder beside it whose name starts the same is not inside it; a Hub dataset never is.
    beside = load_config("gss-small", own_data_overrides(corpus) + ["data.sources.books.train=data/corpus2/a.txt",
                                                                     "data.sources.code.train=emozilla/pg19"])
    assert not sources.reads_default_corpus(beside.data)

    monkeypatch.setattr(sources, "ensure_corpus", lambda directory: pytest.fail(f"built the corpus in {directory}"))
    documents = sources.load_documents(own)
    assert sorted(documents) == ["books", "code", "math"] and len(documents["books"]["train"]) > 0
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers


@pytest.fixture(scope="module")
def train_sets(corpus, cache_dir):
    return {domain: load(cache_dir, str(corpus / domain / "train.jsonl")) for domain in ("books", "code", "math")}


@pytest.mark.parametrize("kind", ["byte_bpe", "sentencepiece_bpe", "sentencepiece_unigram"])
def test_trained_tokenizers_load_with_auto_tokenizer(kind, train_sets, tmp_path):
    trained = tokenizers.train_tokenizer(tokenizers.sample_texts(train_sets, 200_000), kind, vocab_size=400)
    trained.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert 256 < len(loaded) <= 400
    assert loaded.eos_token == "<|endoftext|>" and loaded.eos_token_id is not None
    text = "To be, or not to be: that is the question."
    assert loaded(text).input_ids == trained(text).input_ids
    assert loaded.decode(loaded(text).input_ids).strip() == text
    if kind == "byte_bpe":  # every byte sequence encodes and decodes exactly
        code = (TEXT_DIR / "code_lz4_lz4.c.txt").read_text(encoding="utf-8")[:3000] + " ∑ λ 🙂\t\n"
        assert loaded.decode(loaded(code).input_ids) == code


@pytest.mark.parametrize("kind", ["byte_bpe", "sentencepiece_bpe", "sentencepiece_unigram"])
def test_long_texts_tokenize_in_pieces_to_the_ids_of_the_whole(kind, fixture_texts):
    tokenizer = tokenizers.train_tokenizer(iter(fixture_texts), kind, vocab_size=600)
    for text in fixture_texts:
        pieces = list(tokenizers.text_pieces(text, max_chars=4000))
        assert "".join(pieces) == text and len(pieces) > 1 and max(map(len, pieces)) <= 4000
        assert all(piece.startswith(" ") and not previous[-1].isspace() for previous, piece in zip(pieces, pieces[1:]))
        whole = tokenizer(text, add_special_tokens=False).input_ids
        assert [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False).input_ids] == whole


def test_text_without_a_place_to_cut_is_cut_at_the_limit():
    assert list(tokenizers.text_pieces("x" * 25 + " y", max_chars=10)) == ["x" * 10, "x" * 10, "x" * 5 + " y"]
    assert list(tokenizers.text_pieces("ab cd  ef gh", max_chars=6)) == ["ab cd", "  ef", " gh"]


def test_a_trained_tokenizer_is_cached(train_sets, tmp_path, monkeypatch):
    config = TokenizerConfig(kind="byte_bpe", vocab_size=300, training_chars=100_000)
    first = tokenizers.get_tokenizer(config, train_sets, tmp_path)
    monkeypatch.setattr(tokenizers, "train_tokenizer", lambda *args: pytest.fail("trained again"))
    second = tokenizers.get_tokenizer(config, train_sets, tmp_path)
    assert first.get_vocab() == second.get_vocab()


def test_an_existing_tokenizer_is_accepted(tokenizer_dir, train_sets, tmp_path):
    loaded = tokenizers.get_tokenizer(TokenizerConfig(path=str(tokenizer_dir)), train_sets, tmp_path)
    assert loaded.get_vocab() == AutoTokenizer.from_pretrained(tokenizer_dir).get_vocab()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="tokenizer.path: cannot load a tokenizer from"):
        tokenizers.get_tokenizer(TokenizerConfig(path=str(tmp_path / "empty")), train_sets, tmp_path)


@pytest.mark.parametrize("path", ["/no/such/tokenizer", "./tok", "~/no-such-tokenizer", "runs/x/tokenizer"])
def test_a_missing_local_tokenizer_path_is_not_tried_on_the_hub(path, train_sets, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizers.AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("tried the Hub"))
    with pytest.raises(DataError, match="tokenizer.path: no such directory: "):
        tokenizers.get_tokenizer(TokenizerConfig(path=path), train_sets, tmp_path)


def test_a_missing_tokenizer_in_an_existing_folder_is_not_tried_on_the_hub(train_sets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(tokenizers.AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("tried the Hub"))
    with pytest.raises(DataError, match="tokenizer.path: no such directory: runs/gss-smal"):
        tokenizers.get_tokenizer(TokenizerConfig(path="runs/gss-smal"), train_sets, tmp_path)


@pytest.mark.parametrize("kind, size", [("sentencepiece_bpe", 8), ("sentencepiece_unigram", 8)])
def test_a_vocabulary_too_small_for_the_alphabet_is_an_error_not_silently_larger(kind, size, train_sets, tmp_path):
    with pytest.raises(DataError, match=f"tokenizer.vocab_size: {size} cannot hold the distinct characters"):
        tokenizers.get_tokenizer(TokenizerConfig(kind=kind, vocab_size=size, training_chars=20_000), train_sets,
                                 tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Packing


def test_packing_joins_documents_with_eos_and_cuts_blocks(train_sets, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    documents = train_sets["math"]
    blocks = packing.pack_documents(documents, tokenizer, seq_len=64, num_proc=1)
    stream = list(itertools.chain.from_iterable(
        tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for text in documents["text"]))
    assert blocks[0]["input_ids"].shape == (64,)
    assert [int(i) for block in blocks["input_ids"] for i in block] == stream[:len(stream) // 64 * 64]


def test_a_long_document_is_packed_as_if_tokenized_whole(tokenizer_dir, fixture_texts, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    documents = datasets.Dataset.from_dict({"text": ["".join(fixture_texts), fixture_texts[0][:3000]]})
    stream = [i for text in documents["text"] for i in tokenizer(text).input_ids + [tokenizer.eos_token_id]]
    whole = torch.tensor(stream[:len(stream) // 64 * 64]).view(-1, 64)
    # Pieces of 5,000 characters, 20,000 characters per tokenizer call: the documents span many pieces and calls.
    monkeypatch.setattr(packing, "text_pieces", functools.partial(tokenizers.text_pieces, max_chars=5000))
    monkeypatch.setattr(packing, "CHARS_PER_CALL", 20_000)
    pieces = packing.pack_documents(documents, tokenizer, seq_len=64, num_proc=1)[:]["input_ids"]
    assert len(whole) > 1000 and torch.equal(pieces, whole) and pieces.dtype == torch.int64


def test_packing_runs_in_several_processes_and_is_cached(train_sets, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    first = packing.pack_documents(train_sets["books"], tokenizer, seq_len=32, num_proc=2)
    assert len(first.cache_files) == 2  # one per process
    mtimes = [Path(f["filename"]).stat().st_mtime_ns for f in first.cache_files]
    reloaded = AutoTokenizer.from_pretrained(tokenizer_dir)  # a new object, as in a second run
    second = packing.pack_documents(train_sets["books"], reloaded, seq_len=32, num_proc=2)
    assert second.cache_files == first.cache_files
    assert [Path(f["filename"]).stat().st_mtime_ns for f in second.cache_files] == mtimes  # read back, not rewritten
    other_length = packing.pack_documents(train_sets["books"], reloaded, seq_len=48, num_proc=2)
    assert other_length.cache_files != first.cache_files
