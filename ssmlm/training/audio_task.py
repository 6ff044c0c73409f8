"""The "audio-lm" task: an autoregressive model of raw audio, 16 kHz samples as 256 µ-law codes (SaShiMi, issue 30).

Data: `data.sources.NAME.train`, `.validation` and, optionally, `.test` are local WAV files, folders (a folder means
its *.wav files, sorted) or globs. Every file is read with `read_wav` (8/16/24/32-bit PCM; several channels are
averaged), resampled to 16 kHz where it has another rate (said once per split, with the number of files), and µ-law
encoded. The rule for bad files: a file that `read_wav` refuses (not a PCM WAV, truncated, empty), or whose rate
cannot be resampled, is skipped, and a
split's skipped files are named in one warning line with their count; a split left with no readable file is a
ConfigError naming its key. A silent file is data like any other (all code 128), trained on and scored.

Rows: each clip is cut into windows of data.seq_len samples; a clip shorter than that, and a longer clip's last
partial window, is padded at the end with silence (code 128), and its padded samples are not scored (said once per
split, with the count). A window q_0 … q_{L-1} is trained as the reference (state-spaces/s4,
src/dataloaders/audio.py) trains it: inputs (128, q_0, …, q_{L-2}), targets (q_0, …, q_{L-1}), so the first
sample is predicted from silence and every sample of the window is scored. The targets go to the model as
transformers' `shift_labels` (already aligned with the inputs), with `return_logits=False`: the (samples × 256)
logits are never built.

The µ-law codes of every clip are cached with `datasets` under data.cache_dir, keyed by the files' paths, sizes and
modification times, so a second run does not read the WAV files again; the windows are a cached map of them.

Vocabulary: the 256 codes, fixed. The trainer saves a tokenizer with the model and builds the model config from it,
so the task builds one in code (`audio_tokenizer`): the codes' decimal strings, no padding or end token (a padding
id would freeze code 0's embedding row), code 128 as the start token. The config's `tokenizer` section is not used,
and `tokenizer.path` is refused.

Metrics: the mean negative log-likelihood over the scored samples in bits per sample ("val/bits_per_sample"; "val/loss"
is the same in nats), and beside it "data/unigram_bits", the entropy of the training split's code distribution,
the floor a model must beat. At the end of training the test split, if given, is scored whole ("test/...").
"""

from __future__ import annotations

import glob
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator, PartialState
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from ..data.sources import ensure_corpus, reads_default_corpus, spec_list
from ..data.speech.audio import LEVELS, SAMPLE_RATE, SILENCE, AudioFileError, mu_law_encode, read_resampled
from ..model.modeling import SSMLMForCausalLM
from ..model.ops.linear_cross_entropy import IGNORE_INDEX
from .config import ConfigError, TrainConfig
from .tasks import REMOTE_CODE_COMMENT, Task, TaskData

CLIP_FEATURES = datasets.Features({"path": datasets.Value("string"), "error": datasets.Value("string"),
                                   "rate": datasets.Value("int64"), "codes": datasets.List(datasets.Value("uint8"))})
WINDOWS_PER_BATCH = 64


def audio_tokenizer() -> PreTrainedTokenizerFast:
    """The 256 µ-law codes as a tokenizer (the decimal strings "0".."255", split at whitespace): what the trainer
    saves with the model, and what builds its vocabulary size and special ids. No pad or end token; code 128
    (silence) is the start token that generation begins from."""
    backend = Tokenizer(WordLevel({str(code): code for code in range(LEVELS)}, unk_token=None))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=str(SILENCE),
                                   model_input_names=["input_ids", "attention_mask"])


def audio_files(specs: str | list[str], key: str) -> list[Path]:
    """The WAV files a source value names: files, folders (their *.wav files, sorted) and globs, in order."""
    files = []
    for spec in spec_list(specs):
        path = Path(os.path.expanduser(spec))
        if glob.has_magic(str(path)):
            matches = [Path(match) for match in sorted(glob.glob(str(path)))]
            if not matches:
                raise ConfigError(f"{key}: no file matches {path}")
            files += [match for match in matches if match.is_file()]
        elif path.is_dir():
            files += sorted(child for child in path.iterdir() if child.suffix.lower() == ".wav" and child.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{key}: no such WAV file or folder: {path}")
    return files


def read_clips(paths: list[str], signature: list[tuple[int, int]]) -> Iterator[dict]:
    """Each file's µ-law codes at 16 kHz, or the reason read_wav refused it (a generator for
    Dataset.from_generator; `signature`, the files' sizes and modification times, is only part of the cache key)."""
    for path in paths:
        try:
            audio, rate = read_resampled(path, SAMPLE_RATE)
        except AudioFileError as error:
            yield {"path": path, "error": str(error), "rate": 0, "codes": []}
            continue
        codes = mu_law_encode(audio).to(torch.uint8).numpy()
        yield {"path": path, "error": None, "rate": rate, "codes": codes}


def cut_windows(batch: dict, seq_len: int) -> dict:
    """Clips cut into windows of `seq_len` codes, the last (or only) one padded with silence; "scored" is the number
    of real samples at the start of each window."""
    windows, scored = [], []
    for codes in batch["codes"]:
        codes = np.asarray(codes, dtype=np.uint8)
        for start in range(0, len(codes), seq_len):
            window = codes[start:start + seq_len]
            scored.append(len(window))
            windows.append(np.pad(window, (0, seq_len - len(window)), constant_values=SILENCE))
    return {"codes": windows, "scored": scored}


def say(text: str) -> None:
    """A note or warning about the data, once per launch (every process prepares the data)."""
    if PartialState().is_local_main_process:
        print(text, file=sys.stderr, flush=True)


def load_windows(specs, key: str, config: TrainConfig) -> datasets.Dataset:
    """One split's windows (columns "codes" and "scored", torch format), read through the cache, with the notes the
    module docstring promises: skipped files, resampled files, padded windows."""
    files = audio_files(specs, key)
    if not files:
        raise ConfigError(f"{key}: no .wav file in {', '.join(spec_list(specs))}")
    signature = [(path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    clips = datasets.Dataset.from_generator(
        read_clips, features=CLIP_FEATURES, cache_dir=str(Path(config.data.cache_dir).expanduser() / "datasets"),
        gen_kwargs={"paths": [str(path.resolve()) for path in files], "signature": signature})
    info = clips.select_columns(["path", "error", "rate"]).to_dict()
    errors = [error for error in info["error"] if error is not None]
    if errors:
        say(f"warning: {key}: {len(errors)} file(s) skipped, not readable as PCM WAV: {'; '.join(errors)}")
    if len(errors) == len(files):
        raise ConfigError(f"{key}: no readable WAV file in {', '.join(spec_list(specs))}")
    rates = [rate for rate, error in zip(info["rate"], info["error"]) if error is None and rate != SAMPLE_RATE]
    if rates:
        say(f"note: {key}: {len(rates)} file(s) resampled to {SAMPLE_RATE} Hz (from "
            f"{', '.join(f'{rate} Hz' for rate in sorted(set(rates)))})")
    readable = clips.filter(lambda error: error is None, input_columns="error")
    windows = readable.map(cut_windows, batched=True, batch_size=WINDOWS_PER_BATCH, remove_columns=clips.column_names,
                           fn_kwargs={"seq_len": config.data.seq_len},
                           desc=f"Cutting {config.data.seq_len}-sample windows")
    padded = sum(scored < config.data.seq_len for scored in windows["scored"])
    if padded:
        say(f"note: {key}: {padded} window(s) shorter than data.seq_len={config.data.seq_len} samples padded with "
            f"silence (code {SILENCE}); the padded samples are not scored")
    return windows.with_format("torch", dtype=torch.int64)


def unigram_bits(windows: datasets.Dataset) -> float:
    """The entropy in bits of the codes' distribution over the scored samples of `windows`."""
    counts = np.zeros(LEVELS, dtype=np.int64)
    for batch in windows.with_format("numpy").iter(batch_size=WINDOWS_PER_BATCH):
        codes = np.stack(batch["codes"])
        scored = np.arange(codes.shape[1])[None] < np.asarray(batch["scored"])[:, None]
        counts += np.bincount(codes[scored], minlength=LEVELS)
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log2(probabilities)).sum())


def pairs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's inputs (128, q_0, …, q_{L-2}) and targets (q_0, …, q_{L-1}, -100 where padded) of a batch."""
    codes, scored = batch["codes"], batch["scored"]
    inputs = torch.cat([torch.full_like(codes[:, :1], SILENCE), codes[:, :-1]], dim=1)
    padded = torch.arange(codes.shape[1], device=codes.device)[None] >= scored[:, None]
    return inputs, codes.masked_fill(padded, IGNORE_INDEX)


class AudioLanguageModeling(Task):
    name = "audio-lm"
    model_class = SSMLMForCausalLM
    pipeline_tag = None  # no Hugging Face pipeline generates audio from a causal LM's codes

    def __init__(self):
        self.unigram_bits = math.nan  # of the training split, set by prepare_data

    def prepare_data(self, config: TrainConfig) -> TaskData:
        if config.tokenizer.path:
            raise ConfigError("tokenizer.path: the audio-lm task's vocabulary is the 256 µ-law codes; leave it out")
        if reads_default_corpus(config.data, all_local=True):
            ensure_corpus(config.data.build_corpus, kind="speech")
        train, validation, test = [], {}, {}
        for domain, source in config.data.sources.items():
            key = f"data.sources.{domain}"
            train.append(load_windows(source.train, f"{key}.train", config))
            rows = load_windows(source.validation, f"{key}.validation", config)
            if len(rows) > config.training.eval_blocks:
                rows = rows.shuffle(seed=config.data.seed).select(range(config.training.eval_blocks))
            validation[domain] = rows
            if source.test is not None:
                test[domain] = load_windows(source.test, f"{key}.test", config)
        train = datasets.concatenate_datasets(train)
        self.unigram_bits = unigram_bits(train)
        return TaskData(audio_tokenizer(), train, validation, test)

    def build_model(self, config: TrainConfig, tokenizer, domains=()):
        return self.model_from(config, tokenizer)

    def loss(self, model, batch) -> torch.Tensor:
        inputs, targets = pairs(batch)
        return model(input_ids=inputs, shift_labels=targets, use_cache=False, return_logits=False).loss

    @torch.no_grad()
    def evaluate(self, model, loaders: dict, accelerator: Accelerator, split: str = "val") -> dict[str, float]:
        """The mean NLL over the scored samples of each domain's windows and of all, in nats ("loss") and in bits
        per sample; "samples" counts them. `split` names the metrics: "val", or "test" at the end of training."""
        totals = {}
        for domain, loader in loaders.items():
            sums, counts = [], []
            for batch in loader:
                inputs, targets = pairs(batch)
                losses = model(input_ids=inputs, shift_labels=targets, use_cache=False, return_logits=False,
                               loss_per_position=True).loss  # 0 where not scored
                sums.append(accelerator.gather_for_metrics(losses.double().sum(1)))
                counts.append(accelerator.gather_for_metrics((targets != IGNORE_INDEX).sum(1)))
            totals[domain] = (torch.cat(sums).sum().item(), torch.cat(counts).sum().item())
        totals["all"] = tuple(sum(values) for values in zip(*totals.values()))
        metrics = {"data/unigram_bits": self.unigram_bits}
        for name, (total, count) in totals.items():
            prefix = split if name == "all" else f"{split}/{name}"
            metrics[f"{prefix}/loss"] = total / count
            metrics[f"{prefix}/bits_per_sample"] = total / count / math.log(2)
            metrics[f"{prefix}/samples"] = count
        return metrics

    def validation_line(self, metrics: dict, domains) -> str:
        """Bits per sample (of each domain, when there are several) beside the unigram floor; the test split's too
        once it is scored."""
        line = ""
        for split in ("val", "test"):
            if f"{split}/bits_per_sample" not in metrics:
                continue
            by_domain = ", ".join(f"{domain} {metrics[f'{split}/{domain}/bits_per_sample']:.3f}" for domain in domains
                                  if f"{split}/{domain}/bits_per_sample" in metrics)
            line += (f"{'; test ' if split == 'test' else ''}{metrics[f'{split}/bits_per_sample']:.3f} bits/sample"
                     f"{f' ({by_domain})' if len(list(domains)) > 1 else ''}")
        return f"{line} (unigram floor {metrics['data/unigram_bits']:.3f})"

    # The model card's parts (model_card.py).

    def description(self, config: TrainConfig) -> str:
        return (f"autoregressive model of raw audio ({SAMPLE_RATE} Hz samples as {LEVELS} µ-law codes, trained on "
                f"windows of {config.data.seq_len} samples)")

    def card_validation(self, config: TrainConfig, metrics: dict) -> list[str]:
        rows = [f"| {split} | {domain} | {metrics[f'{split}/{domain}/bits_per_sample']:.3f} | "
                f"{metrics[f'{split}/{domain}/samples']:,} |"
                for split in ("val", "test") for domain in config.data.sources
                if f"{split}/{domain}/bits_per_sample" in metrics]
        return [
            f"Final negative log-likelihood in bits per sample (validation: at most {config.training.eval_blocks} "
            f"windows per source; test: the whole split). The unigram entropy of the training data's codes, the "
            f"floor to beat, is {metrics['data/unigram_bits']:.3f} bits.",
            "",
            "| split | source | bits/sample | samples scored |",
            "|---|---|---:|---:|",
            *rows,
        ]

    def card_usage(self, model_path: str) -> list[str]:
        return [
            "```python",
            "import torch",
            "from transformers import AutoModelForCausalLM",
            "from ssmlm.data.speech import mu_law_decode, write_wav",
            "",
            REMOTE_CODE_COMMENT,
            f"model = AutoModelForCausalLM.from_pretrained({model_path!r}, trust_remote_code=True)",
            f"# Start from silence (code {SILENCE}) and sample one second, sample by sample.",
            f"codes = model.generate(torch.tensor([[{SILENCE}]]), do_sample=True, top_k=0, max_new_tokens="
            f"{SAMPLE_RATE})",
            f'write_wav("sample.wav", mu_law_decode(codes[0, 1:]), {SAMPLE_RATE})',
            "```",
            "",
            "Or from the command line, clips sorted by their log-likelihood, with a picture of their waveforms and "
            "spectrograms:",
            "",
            "```bash",
            f"ssmlm-generate-audio --model {model_path} --out samples --num-clips 8 --seed 0",
            "```",
        ]
