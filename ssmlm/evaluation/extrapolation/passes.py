"""Running the models: the settings, the passes over one length's windows, and the whole evaluation (every model
on every domain at every length), whose dict is results.json."""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ...tooling.memory import PeakMemory, is_out_of_memory
from ...tooling.saved_models import LOAD_ERRORS, UsageError, check_model_dir, load, one_line
from .. import MIN_STREAM_CHUNKS
from ..perplexity import (
    AGREEMENT_RULE,
    Agreement,
    PassTotals,
    context_gain,
    streaming_losses,
    truncated_context_losses,
    window_losses,
)
from .data import DataSpec, TokenizedDocument, WindowSet, concatenated_windows, document_windows, load_texts, tokenize

BASELINE = "truncated"  # the pass that scores the same tokens with a training-length context


@dataclass
class Settings:
    lengths: list[int]
    train_length: int | None
    bucket_size: int
    regimes: list[str]
    stream_chunk: int
    max_window_length: int | None
    max_documents: int | None
    concatenate_documents: bool
    baseline_context: int | None = None  # None: no context gain
    baseline_stride: int | None = None


def windows_by_length(documents: list[TokenizedDocument], start_token: int, settings: Settings) -> dict[int, WindowSet]:
    make = concatenated_windows if settings.concatenate_documents else document_windows
    return {length: make(documents, length, start_token, settings.max_documents) for length in settings.lengths}


def stream_chunk_for(length: int, max_chunk: int) -> int:
    """Tokens per streaming forward at one length: at most --stream-chunk, and short enough that a window is read
    in at least MIN_STREAM_CHUNKS chunks, so that the agreement check always carries a state across boundaries."""
    return max(1, min(max_chunk, math.ceil(length / MIN_STREAM_CHUNKS)))


def run_pass(model, ids: torch.Tensor, name: str, settings: Settings, stream_chunk: int) -> tuple[torch.Tensor, int]:
    """One window's losses in one pass, and the largest the cache grew (streaming only)."""
    if name == "window":
        return window_losses(model, ids), 0
    if name == "streaming":
        return streaming_losses(model, ids, stream_chunk)
    return truncated_context_losses(model, ids, settings.baseline_context, settings.baseline_stride,
                                    settings.stream_chunk), 0


def failure_status(error: BaseException, device: torch.device) -> str:
    """What stopped a pass, for the outputs; other errors propagate."""
    if isinstance(error, (ValueError, NotImplementedError)):  # how a block says it cannot take this length
        return f"not supported: {one_line(error)}"
    if isinstance(error, (RuntimeError, MemoryError)) and is_out_of_memory(error):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return f"out of memory: {one_line(error)}"
    raise error


def evaluate_length(model, window_set: WindowSet, settings: Settings, device: torch.device, progress: tqdm,
                    label: str) -> dict:
    """Each regime, and the truncated-context baseline, at one length of one domain; whether the regimes agree
    and what the whole window gains over the truncated context. Window by window, every pass in turn: what is
    kept of a window is its bucket sums, so memory does not grow with the number of windows."""
    length, statuses, passes = window_set.length, {}, {}
    for name in [*settings.regimes, *([BASELINE] if settings.baseline_context else [])]:
        if not window_set.windows:
            statuses[name] = f"no documents of {length} tokens"
        elif name == "window" and settings.max_window_length and length > settings.max_window_length:
            statuses[name] = f"skipped: longer than --max-window-length {settings.max_window_length}"
        else:
            passes[name] = PassTotals(length, settings.bucket_size, settings.baseline_context)
    planned = len(statuses) + len(passes)
    stream_chunk = stream_chunk_for(length, settings.stream_chunk)
    agreement = Agreement() if {"window", "streaming"} <= passes.keys() else None
    for window in window_set.windows:
        ids, losses = window.ids.to(device), {}
        for name in list(passes):
            progress.set_description(f"{label} {name}")
            try:
                with PeakMemory(device) as peak:
                    losses[name], cache_bytes = run_pass(model, ids, name, settings, stream_chunk)
            except (ValueError, NotImplementedError, RuntimeError, MemoryError) as error:
                statuses[name] = failure_status(error, device)
                del passes[name]
                agreement = None if name in ("window", "streaming") else agreement
                continue
            passes[name].add(losses[name], window.token_bytes, peak, cache_bytes)
        if agreement is not None:
            agreement.add(losses["window"], losses["streaming"])
        progress.update(planned)

    summaries = {name: totals.summary() for name, totals in passes.items()}
    if "streaming" in passes:
        summaries["streaming"].update(cache_bytes=passes["streaming"].cache_bytes, stream_chunk=stream_chunk,
                                      chunks_per_window=math.ceil(length / stream_chunk))
    baseline = passes.get(BASELINE)
    for name in settings.regimes:
        if baseline and name in passes:
            summaries[name]["context_gain"] = context_gain(baseline, passes[name])
    result = {"regimes": {name: summaries.get(name) or {"status": statuses[name]} for name in settings.regimes}}
    if settings.baseline_context:
        result["baseline"] = {"context": settings.baseline_context, "stride": settings.baseline_stride,
                              **(summaries.get(BASELINE) or {"status": statuses[BASELINE]})}
    if agreement is not None:
        result["agreement"] = agreement.summary()
        if result["agreement"]["verdict"] != "agree":
            tqdm.write(f"DISAGREE: {label}: the window and streaming losses differ: {result['agreement']}",
                       file=sys.stderr)
    return result


def load_tokenizer(model_dir: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the tokenizer in {model_dir}: {one_line(error)}") from None
    if not tokenizer.is_fast:
        raise UsageError(f"the tokenizer in {model_dir} is not a fast tokenizer (tokenizer.json): it cannot map "
                         "tokens back to their text, which bits per byte needs")
    if tokenizer.eos_token_id is None:
        raise UsageError(f"the tokenizer in {model_dir} has no EOS token, which starts every scored document")
    return tokenizer


def tokenizer_id(tokenizer) -> str:
    """Equal for tokenizers that cut text into the same tokens: a hash of the whole tokenizer definition."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:12]


def model_names(model_dirs: list[Path]) -> list[str]:
    """Directory names, or the whole paths where two names clash."""
    names = [path.name for path in model_dirs]
    return names if len(set(names)) == len(names) else [str(path) for path in model_dirs]


def windows_by_tokenizer(model_dirs: list[Path], texts: dict[str, list[str]],
                         settings: Settings) -> tuple[list[str], dict[str, dict[str, dict[int, WindowSet]]]]:
    """Each model's tokenizer id, and for each distinct id the windows by domain and length."""
    # Windows are cut once per tokenizer, so models that share one are scored on the very same tokens.
    tokenizer_ids, window_sets = [], {}
    for model_dir in model_dirs:
        tokenizer = load_tokenizer(model_dir)
        key = tokenizer_id(tokenizer)
        tokenizer_ids.append(key)
        if key not in window_sets:
            window_sets[key] = {
                domain: windows_by_length(tokenize(tokenizer, domain_texts), tokenizer.eos_token_id, settings)
                for domain, domain_texts in texts.items()
            }
    return tokenizer_ids, window_sets


def settings_record(settings: Settings, device: torch.device) -> dict:
    """results.json's "settings": what was evaluated, how, and on what."""
    return {
        "lengths": settings.lengths,
        "train_length": settings.train_length,
        "bucket_size": settings.bucket_size,
        "regimes": settings.regimes,
        "stream_chunk": settings.stream_chunk,
        "stream_chunks": f"at most stream_chunk tokens per forward, and at least {MIN_STREAM_CHUNKS} chunks per "
                         "window, so that the state is carried across chunk boundaries at every length",
        "baseline_context": settings.baseline_context,
        "baseline_stride": settings.baseline_stride,
        "max_window_length": settings.max_window_length,
        "max_documents": settings.max_documents,
        "concatenate_documents": settings.concatenate_documents,
        "windows": WINDOWS_CONCATENATED if settings.concatenate_documents else WINDOWS_PER_DOCUMENT,
        "device": str(device),
        "dtype": "float32",
    }


def evaluate(model_dirs: list[Path], specs: list[DataSpec], settings: Settings, device: torch.device,
             text_column: str, cache_dir: str) -> dict:
    """Every model on every domain at every length in each regime; the returned dict is results.json."""
    for model_dir in model_dirs:
        check_model_dir(model_dir)
    texts = {spec.domain: load_texts(spec, text_column, cache_dir) for spec in specs}

    tokenizer_ids, window_sets = windows_by_tokenizer(model_dirs, texts, settings)

    passes = len(settings.regimes) + (1 if settings.baseline_context else 0)
    total = passes * sum(
        len(window_set.windows) for key in tokenizer_ids for by_length in window_sets[key].values()
        for window_set in by_length.values()
    )
    models = []
    with tqdm(total=total, unit="window", dynamic_ncols=True) as progress:
        for name, model_dir, key in zip(model_names(model_dirs), model_dirs, tokenizer_ids):
            _, model = load(model_dir, device, torch.float32)  # one model in memory at a time
            results = []
            for length in settings.lengths:
                for domain, domain_texts in texts.items():
                    window_set = window_sets[key][domain][length]
                    results.append({
                        "domain": domain,
                        "length": length,
                        "documents": len(domain_texts),
                        "qualifying": window_set.qualifying,
                        "evaluated": len(window_set.windows),
                        "document_indices": window_set.document_indices,
                        **evaluate_length(model, window_set, settings, device, progress,
                                          f"{name} {domain} L={length}"),
                    })
            models.append({
                "name": name,
                "path": str(model_dir),
                "block_types": model.config.block_types,
                "parameters": sum(parameter.numel() for parameter in model.parameters()),
                "tokenizer": key,
                "results": results,
            })
            del model

    shared_tokenizer = len(set(tokenizer_ids)) == 1
    return {
        "settings": settings_record(settings, device),
        "agreement_rule": AGREEMENT_RULE,
        "context_gain": CONTEXT_GAIN if settings.baseline_context else "not measured: no --baseline-context",
        "metric": {
            "headline": "perplexity" if shared_tokenizer else "bits_per_byte",
            "why": "all models share one tokenizer: perplexity per token compares them" if shared_tokenizer else
                   "the models use different tokenizers, so perplexity per token does not compare them; bits per "
                   "UTF-8 byte of the scored text does",
            "perplexity": "exp(summed next-token loss / scored tokens)",
            "bits_per_byte": "summed next-token loss / ln 2 / UTF-8 bytes of the scored tokens' text",
        },
        "data": {spec.domain: {"source": spec.source, "documents": len(texts[spec.domain])} for spec in specs},
        "models": models,
    }


CONTEXT_GAIN = (
    "the loss (nats per token) of the truncated pass minus that of the regime, at the same positions: the truncated "
    "pass scores every position from baseline_context (C) on with only the C - baseline_stride to C - 1 tokens "
    "before it, positions before C as the regime does. Per window, over positions [C, L) and per position bucket; "
    "the mean over windows and its standard error (windows are independent documents). Positive: the model "
    "predicts better with the whole window before it than with a training-length context; about zero: it does "
    "not use the tokens beyond C"
)
WINDOWS_PER_DOCUMENT = (
    "the first L tokens of every document with at least L tokens (at most max_documents of them, a seeded sample), "
    "each token scored given the document's earlier tokens and the EOS token before it; shorter documents are "
    "counted, not used"
)
WINDOWS_CONCATENATED = (
    "CONCATENATED DOCUMENTS: all documents joined into one token stream with EOS between them and cut into "
    "consecutive L-token windows (at most max_documents of them, a seeded sample); windows span document "
    "boundaries, so long contexts here are partly unrelated text"
)
