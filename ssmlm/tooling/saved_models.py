"""A saved ssmlm model and its tokenizer, loaded strictly, with every problem a user can fix reported as one line
(UsageError): a wrong directory, a foreign or damaged config, files that differ from the record the trainer wrote
of them, missing, left-over or mismatched weights, weights that are not finite, no tokenizer, an unknown device.
The tools (generate.py, the evaluation, the study) and the trainer's `training.init_from` all load through here.

The trainer writes MANIFEST (ssmlm-files.json) beside its final model, last: the size and SHA-256 of every file of
the model and its tokenizer (not README.md, the model card, which is the user's to edit). A folder with that file
must match it; a folder without it (a model saved by save_pretrained elsewhere) has nothing to be checked against.
"""

import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

import ssmlm  # noqa: F401  (registers the ssmlm classes with the Auto* factories)
from ssmlm.model.configuration import REMOTE_MODULE_NAME
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from .checksums import first_difference, is_record, record_files

MANIFEST = "ssmlm-files.json"
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# What save_pretrained writes beside the weights.
MODEL_FILES = ("config.json", "generation_config.json", f"{REMOTE_MODULE_NAME}.py")


class UsageError(Exception):
    """A problem with the user's input, reported as one line on stderr with exit code 2."""


def model_files(model_dir: Path) -> list[str]:
    """The files of the model save_pretrained wrote in `model_dir`: config, generation config, remote-code module
    and weights (one file, or an index and the shards it names)."""
    names = [name for name in (*MODEL_FILES, *WEIGHT_FILES) if (model_dir / name).is_file()]
    for index in [name for name in names if name.endswith(".index.json")]:
        names += sorted(set(json.loads((model_dir / index).read_text(encoding="utf-8"))["weight_map"].values()))
    return names


def write_manifest(model_dir: Path, names: Iterable[str]) -> None:
    """Record the files `names` of `model_dir` in its MANIFEST, replacing the old one at once."""
    partial = model_dir / f"{MANIFEST}.tmp"
    partial.write_text(json.dumps({"files": record_files(model_dir, names)}, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, model_dir / MANIFEST)


def check_manifest(model_dir: Path) -> None:
    """Refuse a model whose files differ from its MANIFEST, naming the first that does; accept one without."""
    manifest = model_dir / MANIFEST
    if not manifest.exists():
        return
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, TypeError, KeyError):  # unreadable, not JSON, not an object with "files"
        files = None
    if not is_record(files):
        raise UsageError(f"{manifest} is not readable: the record of the model's files is damaged")
    if difference := first_difference(model_dir, files):
        raise UsageError(f"the model in {model_dir} is damaged: {difference} (the sizes and SHA-256 of its files "
                         f"are in {MANIFEST}, written when it was saved; restore the file, or delete {MANIFEST} if "
                         f"you changed it on purpose)")


def check_model_dir(model_dir: Path, tokenizer: bool = True) -> None:
    """Fail early with a precise message instead of a long traceback from from_pretrained: the directory's files
    match its MANIFEST, and it holds an ssmlm model with weights and (with `tokenizer`) a tokenizer."""
    if not model_dir.exists():
        raise UsageError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir} is a file, not a model directory")
    check_manifest(model_dir)  # first: a damaged file is named as such, not reported as what it then looks like
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
    if tokenizer and not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
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
    """The checked model in `model_dir` and its tokenizer, for a tool: (tokenizer, causal LM on `device`, eval)."""
    check_model_dir(model_dir)
    model = load_model(model_dir, AutoModelForCausalLM, dtype)
    return load_tokenizer(model_dir), model.to(device).eval()


def load_tokenizer(model_dir: Path):
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the tokenizer in {model_dir}: {one_line(error)}") from None


def load_model(model_dir: Path, model_class, dtype, task_head: dict | None = None):
    """The model of a directory check_model_dir passed, as `model_class`, with every tensor there, used, of its
    shape and finite. `task_head`: None for the model as saved; for a training task, its head's settings (maybe
    none): where the saved model is of another class or has other head settings, the head starts new, and its
    tensors, only they, may be missing, left over or of another shape."""
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except LOAD_ERRORS as error:
        raise UsageError(f"invalid config.json in {model_dir}: {one_line(error)}") from None
    new_head = task_head is not None and (
        model_class.__name__ not in (config.architectures or ())
        or any(getattr(config, key, None) != value for key, value in task_head.items()))
    for key, value in (task_head or {}).items():
        setattr(config, key, value)
    try:
        # Mismatched shapes are collected, not raised, so that they are reported with the other mismatches; and
        # reported here in one line, not by transformers' multi-line load report.
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        model, loading = model_class.from_pretrained(model_dir, config=config, dtype=dtype,
                                                     ignore_mismatched_sizes=True, output_loading_info=True)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met an object: nothing of it ran
        raise UsageError(f"cannot load the model in {model_dir}: its pickled weights (pytorch_model.bin) hold "
                         f"objects besides tensors, which are not loaded, as they could run code; save the weights "
                         f"as model.safetensors") from None
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the model in {model_dir}: {one_line(error)}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
    check_whole_model(model_dir, model, loading, new_head)
    return model


def check_whole_model(model_dir: Path, model, loading: dict, new_head: bool) -> None:
    """Refuse weights that do not match the config (from_pretrained would initialise what is missing at random and
    ignore what is left over), except a new head's, or are not finite (the run that saved them diverged)."""
    backbone = f"{model.base_model_prefix}."
    problems = []
    for kind, names in (("missing", loading["missing_keys"]), ("unexpected", loading["unexpected_keys"]),
                        ("of the wrong shape", [item[0] if isinstance(item, tuple) else item
                                                for item in loading["mismatched_keys"]])):
        names = sorted(name for name in names if name.startswith(backbone) or not new_head)
        if names:
            problems.append(f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    if problems:
        raise UsageError(f"the weights in {model_dir} do not match its config.json: tensors {'; '.join(problems)}")
    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:
        raise UsageError(f"the weights in {model_dir} are not finite ({len(bad)} tensors hold NaN or infinity, e.g. "
                         f"{bad[0]}): the run that saved them diverged")


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
