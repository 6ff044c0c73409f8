"""Length extrapolation (the GSS paper's Figure 9): perplexity of saved models at 1×..16× their training length,
by position in the context, in the convolutional (window) and streaming (recurrent) regimes.

    ssmlm-eval-length --model runs/gss runs/mega-chunk --data books=data/corpus/books/test.jsonl \
        --train-length 512 --multipliers 1 2 4 8 16 --out reports/extrapolation

For a length L, every document with at least L tokens gives one window: its first L tokens, each scored given
the tokens before it (the first given the EOS token that training puts between documents). Shorter documents
are left out and counted, never padded or joined, unless --concatenate-documents asks for the token stream of
all documents cut into L-token windows, which the output then says. A model that cannot run a length (full-
attention Mega past `mega_max_positions`) is reported "not supported: <its error>" there, and the evaluation goes
on. Outputs: results.json (every number), results.md (tables) and perplexity.png. docs/eval_length.md explains
them.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..data.sources import DataError, is_local, load_split
from ..tooling.markdown import markdown_table
from ..tooling.memory import PeakMemory, is_out_of_memory
from ..tooling.saved_models import LOAD_ERRORS, UsageError, check_model_dir, load, one_line, pick_device
from . import DEFAULT_HUB_SPLIT, HUB_PREFIX, MIN_STREAM_CHUNKS, REGIMES
from .perplexity import (
    AGREEMENT_RULE,
    Agreement,
    PassTotals,
    context_gain,
    streaming_losses,
    truncated_context_losses,
    window_losses,
)

BASELINE = "truncated"  # the pass that scores the same tokens with a training-length context
SAMPLE_SEED = 0  # which documents --max-documents keeps: the same for every model that shares a tokenizer
TOKENIZE_BATCH = 64


# ---------------------------------------------------------------------------------------------------------------
# Evaluation data: documents → tokens with the UTF-8 bytes each one covers → L-token windows.


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


# ---------------------------------------------------------------------------------------------------------------
# What to evaluate.


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


# ---------------------------------------------------------------------------------------------------------------
# Running the models.


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


def evaluate(model_dirs: list[Path], specs: list[DataSpec], settings: Settings, device: torch.device,
             text_column: str, cache_dir: str) -> dict:
    """Every model on every domain at every length in each regime; the returned dict is results.json."""
    for model_dir in model_dirs:
        check_model_dir(model_dir)
    texts = {spec.domain: load_texts(spec, text_column, cache_dir) for spec in specs}

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
        "settings": {
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
        },
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


# ---------------------------------------------------------------------------------------------------------------
# Reports: results.md and perplexity.png, both drawn from the results.json dict alone.

METRIC_NAMES = {"perplexity": "perplexity", "bits_per_byte": "bits per byte"}


def best_regime(result: dict) -> tuple[str, dict] | None:
    """The streaming numbers where they exist (they reach the longest lengths), else the window's; the two agree
    wherever both ran."""
    for regime in ("streaming", "window"):
        summary = result["regimes"].get(regime)
        if summary and summary["status"] == "ok":
            return regime, summary
    return None


def longest_with_numbers(model: dict, domain: str) -> tuple[dict, str, dict] | None:
    """(result, regime, summary) at the longest length where `model` has numbers for `domain`."""
    found = None
    for result in model["results"]:
        best = best_regime(result) if result["domain"] == domain else None
        if best and (found is None or result["length"] > found[0]["length"]):
            found = (result, *best)
    return found


def format_tokens(count: int) -> str:
    return f"{count // 1024}k" if count and count % 1024 == 0 else str(count)


def length_label(length: int, train_length: int | None) -> str:
    return f"{length} ({length / train_length:g}×)" if train_length else str(length)


class StatusNotes:
    """Table cells: a number, or a short status that points to the full message, each message numbered once."""

    def __init__(self, metric: str):
        self.metric = metric
        self.numbers: dict[str, int] = {}

    def cell(self, summary: dict | None) -> str:
        """A regime's or a bucket's number, or what stopped the regime."""
        if summary is None:
            return "–"
        if summary.get("status", "ok") == "ok":
            return f"{summary[self.metric]:.4g}"
        number = self.numbers.setdefault(summary["status"], len(self.numbers) + 1)
        return f"{summary['status'].split(':')[0]} [{number}]"

    def lines(self) -> list[str]:
        if not self.numbers:
            return []
        return ["## Notes", "", *(f"[{number}] {message}  " for message, number in self.numbers.items()), ""]


def render_markdown(results: dict) -> str:
    settings, metric = results["settings"], results["metric"]["headline"]
    notes = StatusNotes(metric)
    length_columns = [length_label(length, settings["train_length"]) for length in settings["lengths"]]
    lines = [
        "# Length extrapolation",
        "",
        f"Windows: {settings['windows']}.",
        f"Lengths: {', '.join(length_columns)}. Position buckets of {settings['bucket_size']} tokens; streaming in "
        f"chunks of at most {settings['stream_chunk']} tokens and at least {MIN_STREAM_CHUNKS} per window; "
        f"{settings['dtype']} on {settings['device']}.",
        f"Tables show **{METRIC_NAMES[metric]}**: {results['metric']['why']}. results.json holds both perplexity and "
        "bits per byte, per bucket and per regime, with times and memory.",
        "",
    ]
    if settings["baseline_context"]:
        context, stride = settings["baseline_context"], settings["baseline_stride"]
        lines += [f"**Context gain**: {results['context_gain']} (here C = {context}: positions from {context} on "
                  f"predicted from {context - stride} to {context - 1} tokens).", ""]
    lines += markdown_table(["model", "blocks", "parameters", "tokenizer"], [
        [model["name"], " ".join(model["block_types"]), f"{model['parameters']:,}", model["tokenizer"]]
        for model in results["models"]
    ])
    for domain in results["data"]:
        lines += domain_section(results, domain, length_columns, notes)

    lines += ["## Memory and time", "",
              "Peak memory each pass added while scoring one window (the largest over windows and domains; on a "
              "CPU the resident-set high-water mark, on a GPU allocated memory), streaming's cache size, and tokens "
              f"per second. `{BASELINE}` is the truncated-context pass of the context gain.", ""]
    lines += markdown_table(["model", "pass", *length_columns], [
        [model["name"], name, *(memory_cell(model, length, name) for length in settings["lengths"])]
        for model in results["models"]
        for name in [*settings["regimes"], *([BASELINE] if settings["baseline_context"] else [])]
    ])

    summary = agreement_summary(results)
    lines += ["## Window vs. streaming", "", summary[0].upper() + summary[1:] + ".",
              f"Rule: {results['agreement_rule']}", ""]
    agreements = [
        [model["name"], result["domain"], str(result["length"]),
         f"{result['agreement']['max_abs_position_difference']:.2e}",
         f"{result['agreement']['relative_sum_difference']:.2e}", f"**{result['agreement']['verdict']}**"]
        for model in results["models"] for result in model["results"] if "agreement" in result
    ]
    if agreements:
        lines += markdown_table(["model", "domain", "length", "largest loss difference at a position (nats)",
                        "relative difference of the summed loss", "verdict"], agreements)
    return "\n".join(lines + notes.lines())


def domain_section(results: dict, domain: str, length_columns: list[str], notes: StatusNotes) -> list[str]:
    """One domain's tables: the metric and the context gain by evaluation length, the windows scored, and the
    metric and the context gain by position."""
    settings, data = results["settings"], results["data"][domain]
    metric_name = METRIC_NAMES[results["metric"]["headline"]].capitalize()
    by_length, gain_by_length, scored = [], [], []
    for model in results["models"]:
        results_at = {result["length"]: result for result in model["results"] if result["domain"] == domain}
        for regime in settings["regimes"]:
            summaries = [results_at[length]["regimes"].get(regime) for length in settings["lengths"]]
            by_length.append([model["name"], regime, *map(notes.cell, summaries)])
            gain_by_length.append([model["name"], regime, *map(gain_cell, summaries)])
        scored.append([model["name"], *(f"{results_at[length]['evaluated']} of {results_at[length]['qualifying']}"
                                        for length in settings["lengths"])])
    lines = [f"## {domain} — `{data['source']}` ({data['documents']} documents)", "",
             f"**{metric_name} by evaluation length**", ""]
    lines += markdown_table(["model", "regime", *length_columns], by_length)
    if settings["baseline_context"]:
        lines += [f"**Context gain by evaluation length** (nats per token over positions {settings['baseline_context']}"
                  " to L, ± standard error over windows): the loss with a truncated context minus the loss with the "
                  "whole window; about zero where the model does not use the tokens beyond the truncated context", ""]
        lines += markdown_table(["model", "regime", *length_columns], gain_by_length)
    lines += ["**Windows scored** of those available (documents with at least L tokens, or windows of the "
              "concatenated stream)", ""]
    lines += markdown_table(["model", *length_columns], scored)

    longest = {model["name"]: longest_with_numbers(model, domain) for model in results["models"]}
    longest = {name: found for name, found in longest.items() if found}
    if not longest:
        return lines
    columns = [f"{name} (L={result['length']}, {regime})" for name, (result, regime, _) in longest.items()]
    buckets = {name: {bucket["start"]: bucket for bucket in summary["buckets"]}
               for name, (_, _, summary) in longest.items()}
    gains = {name: {bucket["start"]: bucket for bucket in summary.get("context_gain", {}).get("buckets", [])}
             for name, (_, _, summary) in longest.items()}
    metric_rows, gain_rows = [], []
    for start in sorted({start for by_start in buckets.values() for start in by_start}):
        end = max(by_start[start]["end"] for by_start in buckets.values() if start in by_start)
        positions = f"{format_tokens(start)}–{format_tokens(end)}"
        metric_rows.append([positions, *(notes.cell(buckets[name].get(start)) for name in longest)])
        gain_rows.append([positions, *(gain_text(gains[name].get(start)) for name in longest)])
    lines += [f"**{metric_name} by position in the context**, at each model's longest length with numbers", ""]
    lines += markdown_table(["positions", *columns], metric_rows)
    if settings["baseline_context"]:
        lines += ["**Context gain by position** (nats per token ± standard error), at the same lengths", ""]
        lines += markdown_table(["positions", *columns], gain_rows)
    return lines


def gain_text(gain: dict | None) -> str:
    """"+0.012 ± 0.004" nats (small values in exponent form); no error from a single window; "–" where there is
    nothing to compare."""
    if gain is None or gain["nats"] is None:
        return "–"
    error = gain["standard_error"]
    return f"{nats_text(gain['nats'], '+')}" + (f" ± {nats_text(error)}" if error is not None else " (1 window)")


def nats_text(value: float, sign: str = "") -> str:
    return f"{value:{sign}.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:{sign}.1e}"


def gain_cell(summary: dict | None) -> str:
    if summary is None or summary["status"] != "ok" or "context_gain" not in summary:
        return "–"
    return gain_text(summary["context_gain"])


def format_bytes(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def pass_summary(result: dict, name: str) -> dict:
    return result["baseline"] if name == BASELINE else result["regimes"][name]


def memory_cell(model: dict, length: int, name: str) -> str:
    summaries = [pass_summary(result, name) for result in model["results"]
                 if result["length"] == length and pass_summary(result, name)["status"] == "ok"]
    if not summaries:
        return "–"
    peak = max((summary["peak_memory_bytes"] for summary in summaries if summary["peak_memory_bytes"] is not None),
               default=None)
    speed = sum(summary["tokens"] for summary in summaries) / sum(summary["seconds"] for summary in summaries)
    cache = f", cache {format_bytes(max(summary['cache_bytes'] for summary in summaries))}" \
        if name == "streaming" else ""
    return f"{format_bytes(peak)}{cache}, {speed:,.0f} tok/s"


def agreement_summary(results: dict) -> str:
    verdicts = [(model["name"], result["domain"], result["length"], result["agreement"]["verdict"])
                for model in results["models"] for result in model["results"] if "agreement" in result]
    disagreeing = [f"{name} {domain} L={length}" for name, domain, length, verdict in verdicts if verdict != "agree"]
    if not verdicts:
        return "no length ran in both regimes, so their agreement was not checked"
    if disagreeing:
        return f"DISAGREE: the regimes differ at {len(disagreeing)} of {len(verdicts)} checks: {', '.join(disagreeing)}"
    return f"the regimes agree at all {len(verdicts)} (model, domain, length) where both ran"


def write_plot(results: dict, path: Path) -> None:
    """Per domain: the headline metric by position at each model's longest length, and by evaluation length."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    metric = results["metric"]["headline"]
    metric_name = METRIC_NAMES[metric]
    train_length = results["settings"]["train_length"]
    domains = list(results["data"])
    with_gain = bool(results["settings"]["baseline_context"])
    panels = 3 if with_gain else 2
    figure, axes = plt.subplots(len(domains), panels, figsize=(6.5 * panels, 4.5 * len(domains)), squeeze=False)
    for (by_position, by_length, *gain_axis), domain in zip(axes, domains):
        for model in results["models"]:
            points = [(result["length"], best[1][metric]) for result in model["results"]
                      if result["domain"] == domain and (best := best_regime(result))]
            if points:
                by_length.plot(*zip(*points), marker="o", label=model["name"])
            longest = longest_with_numbers(model, domain)
            if longest:
                result, regime, summary = longest
                centres = [(bucket["start"] + bucket["end"]) / 2 for bucket in summary["buckets"]]
                by_position.plot(centres, [bucket[metric] for bucket in summary["buckets"]], marker=".",
                                 label=f"{model['name']} (L={result['length']}, {regime})")
        for axis in (by_position, by_length):
            values = [value for line in axis.get_lines() for value in line.get_ydata()]
            if values and max(values) > 10 * min(values):
                axis.set_yscale("log")  # a model whose perplexity explodes would flatten every other line
            if train_length:
                axis.axvline(train_length, color="grey", linestyle="--", linewidth=1, label="training length")
            axis.set_ylabel(metric_name)
            axis.grid(alpha=0.3)
            if axis.has_data():
                axis.legend(fontsize="small")
        by_position.set(title=f"{domain}: {metric_name} by position in the context",
                        xlabel="position (tokens)")
        by_length.set(title=f"{domain}: {metric_name} by evaluation length", xlabel="evaluation length (tokens)")
        by_length.set_xscale("log", base=2)
        lengths = results["settings"]["lengths"]
        by_length.set_xticks(lengths, [format_tokens(length) for length in lengths])
        by_length.minorticks_off()
        if with_gain:
            plot_context_gain(gain_axis[0], results, domain)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_context_gain(axis, results: dict, domain: str) -> None:
    """Context gain by position at each model's longest length with numbers, both regimes, ± standard error."""
    for index, model in enumerate(results["models"]):  # colour C<index>: the model's colour in the other panels
        longest = longest_with_numbers(model, domain)
        if not longest:
            continue
        result = longest[0]
        for regime, style in (("streaming", "-"), ("window", "--")):
            summary = result["regimes"].get(regime)
            if not summary or summary["status"] != "ok" or "context_gain" not in summary:
                continue
            buckets = [bucket for bucket in summary["context_gain"]["buckets"] if bucket["nats"] is not None]
            centres = [(bucket["start"] + bucket["end"]) / 2 for bucket in buckets]
            gains = np.array([bucket["nats"] for bucket in buckets])
            errors = np.array([bucket["standard_error"] or 0.0 for bucket in buckets])
            axis.plot(centres, gains, style, color=f"C{index}", marker=".",
                      label=f"{model['name']} (L={result['length']}, {regime})")
            axis.fill_between(centres, gains - errors, gains + errors, color=f"C{index}", alpha=0.12)
    context = results["settings"]["baseline_context"]
    axis.axhline(0, color="black", linewidth=0.8)
    axis.axvline(context, color="grey", linestyle="--", linewidth=1, label=f"truncated context ({context})")
    axis.set(title=f"{domain}: context gain by position (± standard error)", xlabel="position (tokens)",
             ylabel="nats per token: truncated − whole window")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def write_outputs(results: dict, out: Path) -> str:
    """results.json, results.md and perplexity.png in `out`; returns the agreement summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(render_markdown(results), encoding="utf-8")
    write_plot(results, out / "perplexity.png")
    return agreement_summary(results)
