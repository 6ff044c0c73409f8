"""The training configuration: a typed tree of dataclasses loaded from YAML, with `key=value` overrides.

    config = load_config("configs/gss-small.yaml", ["training.max_steps=100", "model.hidden_size=128"])
    config = load_config("gss-small")      # a shipped config by name: ssmlm/configs/gss-small.yaml

Every key is checked against the dataclass it lands in: an unknown key or a value of the wrong type raises
ConfigError naming the dotted key and the expected type. The `model` section is the keyword arguments of
SSMLMConfig, whose own strict validation checks the values; `vocab_size` and the special token ids come from the
tokenizer and may not be set there.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from accelerate.utils import LoggerType

from ..model.configuration import SSMLMConfig
from ..model.legacy import upgrade_legacy_fields
from ..model.kernels import KERNELS
from ..data.tokenizer import SPECIAL_TOKENS
from ..shipped import SHIPPED_CONFIGS, shipped_config_names


class ConfigError(ValueError):
    """A problem with the user's configuration or input data, reported as one line (train.py exits with code 2)."""


def config_path(name_or_path: str | Path) -> Path:
    """The config file to read: a file that exists as given, else a shipped config named by a bare name, with or
    without its .yaml ("gss-small" is ssmlm/configs/gss-small.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if len(path.parts) == 1 and shipped.is_file():
        return shipped
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file, or a shipped config's name")
    if len(path.parts) == 1:
        raise ConfigError(f"config file not found: {path}; the shipped configs are {', '.join(shipped_config_names())}")
    raise ConfigError(f"config file not found: {path}")


# Accelerate's tracker names ("all": every installed one).
TRACKERS = tuple(tracker.value for tracker in LoggerType)
SEED_RANGE = 2**32  # numpy's seeds, which set_seed also sets, are 32-bit
# Model keys the trainer fills from the tokenizer, and HF bookkeeping fields a user has no reason to set.
MODEL_KEYS_FROM_TOKENIZER = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
MODEL_KEYS_INTERNAL = ("transformers_version", "architectures")


@dataclass
class SourceConfig:
    """Where one domain's documents come from. `train` and `validation` each take local files or a Hub dataset.
    (The audio-lm task reads WAV files, folders and globs instead, and also `test`: audio_task.py.)

    A local source is one or more paths or globs: `.txt` files are one document each, `.jsonl`/`.json` files one
    document per record (its `text_column` field). Anything else is a Hugging Face Hub dataset name, optionally
    with a split after a colon ("deepmind/pg19", "codeparrot/codeparrot-clean-valid:train"); the split defaults
    to the key's own name.
    """

    train: str | list[str]
    validation: str | list[str]
    text_column: str = "text"
    hub_config: str | None = None  # configuration name of a Hub dataset, e.g. a language of a code set
    streaming: bool = False  # stream a Hub dataset instead of downloading it whole (then set max_documents)
    max_documents: int | None = None  # a seeded random sample of N documents per split (the first N when streaming)
    test: str | list[str] | None = None  # audio-lm only: a test split, scored once at the end of training


@dataclass
class DataConfig:
    sources: dict[str, SourceConfig]  # domain name -> its documents; validation is reported per domain
    seq_len: int = 512  # tokens per training block
    # Build the task's default corpus here first if it is missing (and a source reads from it): the books/code/math
    # text corpus (ssmlm.data.corpus), or for audio-lm the spoken digits (ssmlm.data.speech).
    build_corpus: str | None = None
    cache_dir: str = "~/.cache/ssmlm"  # datasets' Arrow caches and trained tokenizers
    num_proc: int = 2  # processes for tokenizing and packing
    seed: int = 0  # for max_documents sampling


@dataclass
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer (directory or Hub name); when null one is trained
    kind: Literal["byte_bpe", "sentencepiece_bpe", "sentencepiece_unigram"] = "byte_bpe"
    vocab_size: int = 8192
    training_chars: int = 20_000_000  # characters of the training split the tokenizer learns from, shared by domains


@dataclass
class TrainingConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # blocks per device per micro-batch; global batch = batch_size x processes x accumulation
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    ssm_learning_rate: float = 1e-3  # for the SSM kernel parameters (no weight decay)
    weight_decay: float = 0.1  # for matrices only: not for norms, biases or SSM parameters
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    warmup_steps: int = 100
    max_grad_norm: float | None = 1.0  # gradient clipping threshold; null switches clipping off
    # bf16 on CPUs and GPUs that support it, fp16 (with loss scaling) on GPUs only; FFTs stay in float32 either way
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # On the CPU: reuse freed memory instead of faulting in fresh pages every step, which makes long sequences
    # train faster; the process keeps its peak heap (ssmlm/tooling/memory.py; measured in docs/benchmarks.md).
    keep_freed_host_memory: bool = True
    # torch.compile the model (inductor, dynamic shapes: one graph for every length); the first steps and the first
    # validation pass are slower while it compiles.
    compile: bool = False
    # A saved ssmlm model (directory or Hub name) to start from, e.g. a pretrained language model to fine-tune as
    # a classifier: its architecture and weights, and its tokenizer unless tokenizer.path is set (a model setting
    # that differs from the saved model's is an error).
    init_from: str | None = None
    # Recompute each block's activations in the backward pass instead of storing them: less memory, more time.
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_every: int = 100  # steps between validation passes (also at step 0 and at the end)
    eval_blocks: int = 64  # validation blocks per domain


@dataclass
class OutputConfig:
    dir: str = "runs/gss-small"  # checkpoints, logs and the final model + tokenizer (save_pretrained)
    save_every: int = 500  # steps between checkpoints (also one at the end)
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    log_every: int = 10  # steps between loss records
    tracker: str | None = "tensorboard"  # an Accelerate tracker (TRACKERS: "tensorboard", "wandb", ...) or null


@dataclass
class TrainConfig:
    data: DataConfig
    # What is trained (tasks.py): "causal-lm", the language model; "domain-classification", which data source a
    # window of data.seq_len tokens comes from; "audio-lm", raw audio as 256 µ-law codes (audio_task.py; it builds
    # its own fixed vocabulary, so the `tokenizer` section is not used).
    task: Literal["causal-lm", "domain-classification", "audio-lm"] = "causal-lm"
    model: dict[str, Any] = field(default_factory=dict)  # SSMLMConfig keyword arguments
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        # "~/runs/x" means the home directory, as in a shell: never a folder named "~"; "runs/x/" and "runs/y/../x"
        # are the directory runs/x.
        self.output.dir = os.path.normpath(os.path.expanduser(self.output.dir)) if self.output.dir.strip() else ""
        self.data.cache_dir = os.path.expanduser(self.data.cache_dir)
        if self.data.build_corpus:
            self.data.build_corpus = os.path.expanduser(self.data.build_corpus)
        if self.tokenizer.path:
            self.tokenizer.path = os.path.expanduser(self.tokenizer.path)
        self._check_model_section()
        self._check_ranges()

    def _check_ranges(self):
        """Every number in its range, so that a run never starts with a setting that does nothing or does harm."""
        training, tokenizer = self.training, self.tokenizer
        positive = {
            "data.seq_len": self.data.seq_len, "data.num_proc": self.data.num_proc,
            "tokenizer.vocab_size": tokenizer.vocab_size, "tokenizer.training_chars": tokenizer.training_chars,
            "training.max_steps": training.max_steps, "training.batch_size": training.batch_size,
            "training.gradient_accumulation_steps": training.gradient_accumulation_steps,
            "training.eval_every": training.eval_every, "training.eval_blocks": training.eval_blocks,
            "output.save_every": self.output.save_every, "output.keep_checkpoints": self.output.keep_checkpoints,
            "output.log_every": self.output.log_every,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}: must be positive, got {value}")
        if self.data.seq_len < 2:
            raise ConfigError(f"data.seq_len: must be at least 2 (a block predicts its next tokens), "
                              f"got {self.data.seq_len}")
        if not self.output.dir.strip():
            raise ConfigError("output.dir: empty; give the directory the run is written to")
        if not self.data.sources:
            raise ConfigError("data.sources: no domains given; expected a mapping of domain name to "
                              "train/validation files")
        for domain, source in self.data.sources.items():
            if source.max_documents is not None and source.max_documents <= 0:
                raise ConfigError(f"data.sources.{domain}.max_documents: must be positive or null, "
                                  f"got {source.max_documents}")
        if training.warmup_steps < 0:
            raise ConfigError(f"training.warmup_steps: must be 0 or more, got {training.warmup_steps}")
        for key in ("learning_rate", "ssm_learning_rate", "weight_decay"):
            value = getattr(training, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"training.{key}: must be a finite number, 0 or more, got {value}")
        for key in ("adam_beta1", "adam_beta2"):
            value = getattr(training, key)
            if not 0 <= value < 1:  # also false for NaN
                raise ConfigError(f"training.{key}: must be in [0, 1), got {value}")
        if training.max_grad_norm is not None and not (math.isfinite(training.max_grad_norm)
                                                       and training.max_grad_norm > 0):
            raise ConfigError(f"training.max_grad_norm: must be a positive finite number, or null to switch "
                              f"clipping off, got {training.max_grad_norm}")
        for key, seed in (("training.seed", training.seed), ("data.seed", self.data.seed)):
            if not 0 <= seed < SEED_RANGE:
                raise ConfigError(f"{key}: must be in [0, 2**32), got {seed}")
        # The special tokens and, for byte-level BPE, all 256 bytes must fit: a smaller vocabulary is not honoured.
        smallest = len(SPECIAL_TOKENS) + (256 if tokenizer.kind == "byte_bpe" else 1)
        if tokenizer.path is None and tokenizer.vocab_size < smallest:
            raise ConfigError(f"tokenizer.vocab_size: a {tokenizer.kind} tokenizer needs at least {smallest} "
                              f"entries ({len(SPECIAL_TOKENS)} special tokens"
                              f"{' and 256 bytes' if tokenizer.kind == 'byte_bpe' else ' and one piece'}), "
                              f"got {tokenizer.vocab_size}")
        if self.output.tracker is not None and self.output.tracker not in TRACKERS:
            raise ConfigError(f"output.tracker: unknown tracker {self.output.tracker!r}; expected one of "
                              f"{', '.join(TRACKERS)}, or null")

    def _check_model_section(self):
        self.model = upgrade_legacy_fields(self.model, saved=False)
        allowed = {f.name for f in dataclasses.fields(SSMLMConfig)} - set(MODEL_KEYS_INTERNAL)
        for key in self.model:
            if key in MODEL_KEYS_FROM_TOKENIZER:
                raise ConfigError(f"model.{key}: set by the tokenizer; use tokenizer.vocab_size for the vocabulary")
            if key not in allowed:
                raise ConfigError(f"model.{key}: unknown key; SSMLMConfig has no field {key!r}")
        try:
            SSMLMConfig(**self.model_arguments())
        except Exception as error:  # strict dataclass validation: its last line names the field and the problem
            raise ConfigError(f"model: {str(error).strip().splitlines()[-1].strip()}") from None
        self.model = self.model_arguments()  # saved with the run (train_config.yaml) as it was trained

    def model_arguments(self) -> dict:
        """The `model` section, with the kernel's training-length option (DSS-softmax's normalisation length) set
        to data.seq_len where the config leaves it out."""
        arguments = dict(self.model)
        kernel = KERNELS.get(arguments.get("ssm_kernel", SSMLMConfig.ssm_kernel))
        option = getattr(kernel, "TRAINING_LENGTH_OPTION", None)
        options = arguments.get("ssm_kernel_options") or {}
        if option and isinstance(options, dict) and options.get(option) is None:
            arguments["ssm_kernel_options"] = {**options, option: self.data.seq_len}
        return arguments

    def model_config(self, tokenizer, **head) -> SSMLMConfig:
        """The model's config, with the vocabulary and special tokens of `tokenizer` (and a task head's settings,
        such as num_labels)."""
        return SSMLMConfig(**self.model_arguments(), **head, vocab_size=len(tokenizer),
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# YAML read as YAML 1.2 (core schema) reads numbers and booleans. PyYAML follows YAML 1.1: a float needs a dot
# ("1.0e-3" but not "1e-3"), yes/no/on/off are booleans (`mixed_precision: no` would be False, not "no"), a leading
# zero makes an int octal (`max_steps: 010` would be 8) and `1:30` is a base-60 int (90). Here ints are decimal, 0o
# octal or 0x hex, and digits may be grouped by underscores (`6_000_000`, as in Python; YAML 1.2 has no grouping);
# anything else is a string, which a numeric setting then refuses by name. A key given twice in one mapping (two
# `training:` sections) is an error rather than the last one silently winning.


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping (the second would silently replace the first)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-").replace("_", "")
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        return sign * int(digits[2:] if base != 10 else digits, base)


IMPLICIT_TAGS_REPLACED = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in IMPLICIT_TAGS_REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
DIGITS = "[0-9]+(?:_[0-9]+)*"  # digits, grouped by underscores as in Python: 6_000_000
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(rf"^(?:[-+]?{DIGITS}|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(rf"""^(?:[-+]?{DIGITS}\.(?:{DIGITS})?(?:[eE][-+]?[0-9]+)?
                   |[-+]?{DIGITS}[eE][-+]?[0-9]+
                   |[-+]?\.{DIGITS}(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def parse_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML ({' '.join(str(error).split())})") from None


# ---------------------------------------------------------------------------------------------------------------
# Building the typed tree from plain data, naming the dotted key of any mismatch.


def type_name(annotation) -> str:
    if typing.get_origin(annotation) is Literal:
        return " or ".join(repr(value) for value in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) in (list, dict):
        arguments = ", ".join(type_name(arg) for arg in typing.get_args(annotation))
        return f"{typing.get_origin(annotation).__name__}[{arguments}]"
    if annotation is type(None):
        return "null"
    if dataclasses.is_dataclass(annotation):
        return f"a mapping ({annotation.__name__})"
    return getattr(annotation, "__name__", str(annotation))


def convert(value: Any, annotation, key: str) -> Any:
    """`value` as an instance of `annotation`, or ConfigError naming `key` and the expected type."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return convert(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(annotation):
            return value
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return build_dataclass(annotation, value, key)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(annotation)
            return [convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, item = typing.get_args(annotation)
            return {str(k): convert(v, item, f"{key}.{k}") for k, v in value.items()}
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is type(None):
        if value is None:
            return None
    elif isinstance(value, annotation):
        return value
    shown = "null" if value is None else f"{type(value).__name__} {value!r}"
    raise ConfigError(f"{key}: expected {type_name(annotation)}, got {shown}")


def build_dataclass(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(f"{key}: unknown key; expected one of {', '.join(fields)}")
        kwargs[name] = convert(value, hints[name], key)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{name}: missing; expected {type_name(hints[name])}")
    return cls(**kwargs)


def apply_override(values: dict, override: str) -> None:
    """Set `a.b.c=value` in the nested dict `values`; the value is parsed as YAML (numbers, lists, null...)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. training.max_steps=100")
    parts = key.split(".")
    node = values
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])}: is a value, not a section; cannot set {key}")
        node = child
    node[parts[-1]] = parse_yaml(text, f"override {key}") if text.strip() else None


def config_from_dict(values: dict, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    values = copy.deepcopy(values)
    for override in overrides:
        apply_override(values, override)
    return build_dataclass(TrainConfig, values)


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A config file (or a shipped config's name, see config_path) with `key=value` overrides applied."""
    return config_from_dict(read_config_values(config_path(name_or_path)), overrides)


def read_config_values(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """The plain values of a config file. `extends: OTHER.yaml` (relative to the file) starts from another
    config: sections merge key by key, and this file's values win."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    values = parse_yaml(text, str(path))
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, tokenizer, training, output)")
    base = values.pop("extends", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected the path of another config, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in (*extended_by, path.resolve()):
        raise ConfigError(f"{path}: extends: {base} extends itself")
    return merge_sections(read_config_values(base_path, (*extended_by, path.resolve())), values)


def merge_sections(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_sections(merged[key], value) if both_mappings else value
    return merged


def flat_values(values: dict, prefix: str = "") -> dict:
    """Nested config values as {dotted key: value}."""
    flat = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flat_values(value, dotted))
        else:
            flat[dotted] = value
    return flat


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
