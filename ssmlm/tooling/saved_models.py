"""A saved ssmlm model and its tokenizer, loaded for a tool, with every problem a user can fix reported as one line
(UsageError): a wrong directory, a foreign or damaged config, missing or mismatched weights, weights that are not
finite, no tokenizer, an unknown device."""

import json
import pickle
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

import ssmlm  # noqa: F401  (registers the ssmlm classes with the Auto* factories)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class UsageError(Exception):
    """A problem with the user's input, reported as one line on stderr with exit code 2."""


def check_model_dir(model_dir: Path) -> None:
    """Fail early with a precise message instead of a long traceback from from_pretrained."""
    if not model_dir.exists():
        raise UsageError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise UsageError(f"--model must be a directory, but {model_dir} is a file")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{model_dir} holds no ssmlm model: no config.json")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise UsageError(f"{model_dir} holds no ssmlm model: cannot read config.json ({error})") from None
    if model_type != ssmlm.SSMLMConfig.model_type:
        raise UsageError(f"{model_dir} holds no ssmlm model: config.json has model_type {model_type!r}, "
                         f"expected 'ssmlm'")
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(f"{model_dir} holds no ssmlm model: no weights (model.safetensors)")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{model_dir} has no tokenizer (tokenizer.json / tokenizer_config.json); save one "
                         f"there with tokenizer.save_pretrained")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


# What from_pretrained raises for damaged files: a bad config field, a truncated or foreign weights file, a
# pytorch_model.bin that holds more than tensors (torch.load's weights_only refuses it, and nothing in it runs), ...
LOAD_ERRORS = (OSError, ValueError, RuntimeError, StrictDataclassError, SafetensorError, pickle.UnpicklingError)


def load(model_dir: Path, device: torch.device, dtype):
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except LOAD_ERRORS as error:
        raise UsageError(f"invalid config.json in {model_dir}: {one_line(error)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, config=config)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the tokenizer in {model_dir}: {one_line(error)}") from None
    try:
        # Mismatched shapes are collected, not raised, so that they are reported with the other mismatches; and
        # reported here in one line, not by transformers' multi-line load report.
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        model, loading = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype,
                                                              ignore_mismatched_sizes=True, output_loading_info=True)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the model in {model_dir}: {one_line(error)}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
    check_whole_model(model_dir, model, loading)
    return tokenizer, model.to(device).eval()


def check_whole_model(model_dir: Path, model, loading: dict) -> None:
    """Refuse weights that do not match the config (from_pretrained would initialise what is missing at random and
    ignore what is left over) or are not finite (the run that saved them diverged)."""
    problems = []
    for kind, names in (("missing", loading["missing_keys"]), ("unexpected", loading["unexpected_keys"]),
                        ("of the wrong shape", [item[0] if isinstance(item, tuple) else item
                                                for item in loading["mismatched_keys"]])):
        if names:
            names = sorted(names)
            problems.append(f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    if problems:
        raise UsageError(f"the weights in {model_dir} do not match its config.json: tensors {'; '.join(problems)}")
    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:
        raise UsageError(f"the weights in {model_dir} are not finite ({len(bad)} tensors hold NaN or infinity, e.g. "
                         f"{bad[0]}): the run that saved them diverged")


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
