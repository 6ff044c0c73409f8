"""Command line generation from a saved ssmlm model: the logic behind `generate.py`.

    python generate.py --model DIR --prompt "Once upon a time" --max-new-tokens 50 --seed 0

The prompt comes from `--prompt TEXT`, `--prompt-file FILE`, or stdin (`--prompt -`, or no `--prompt` with text
piped in); the one line end that closes a file or `echo`'s output is dropped. The prompt is printed, then the
continuation is streamed as it is produced. Problems the user can fix (a wrong directory, an empty prompt, ...)
end with a one-line message on stderr and exit code 2, no traceback.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

import ssmlm  # noqa: F401  (registers the ssmlm classes with the Auto* factories)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TextStreamer, set_seed
from transformers.utils import logging as transformers_logging

PROG = "generate.py"
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(Exception):
    """A problem with the user's input, reported as one line on stderr with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Continue a prompt with a saved ssmlm model, streaming the text to stdout.",
    )
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="directory written by save_pretrained (config.json, weights and tokenizer)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", metavar="TEXT", help="the prompt; '-' reads it from stdin, as does no --prompt "
                        "when stdin is not a terminal (a final line end is dropped)")
    source.add_argument("--prompt-file", metavar="FILE",
                        help="read the prompt from a UTF-8 text file (a final line end is dropped)")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0 for all "
                        "(default 50)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass (default 1.0)")
    parser.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="penalty > 1 discourages repeating "
                        "tokens (default 1.0: none)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (default 1); beam search "
                        "prints the text when done instead of streaming it")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', "
                        "'cuda:1', ...")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype (default float32; "
                        "'auto' keeps the checkpoint's)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject out-of-range numbers the way argparse rejects bad types (usage line, exit code 2)."""
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if args.temperature <= 0:
        parser.error("--temperature must be positive (use --greedy for deterministic output)")
    if args.top_k < 0:
        parser.error("--top-k must be 0 or more")
    if not 0 < args.top_p <= 1:
        parser.error("--top-p must be in (0, 1]")
    if args.repetition_penalty <= 0:
        parser.error("--repetition-penalty must be positive")
    if args.num_beams < 1:
        parser.error("--num-beams must be at least 1")


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


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt != "-":
        prompt = args.prompt
    elif args.prompt_file is not None:
        try:
            prompt = drop_line_end(Path(args.prompt_file).read_bytes().decode("utf-8"))
        except OSError as error:
            raise UsageError(f"cannot read prompt file {args.prompt_file}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise UsageError(f"prompt file {args.prompt_file} is not UTF-8 text") from None
    elif args.prompt is None and sys.stdin.isatty():
        raise UsageError("no prompt: pass --prompt TEXT or --prompt-file FILE, or pipe the prompt on stdin")
    else:
        # Decode the bytes ourselves: text-mode stdin may be set to replace or escape invalid UTF-8.
        stdin_bytes = getattr(sys.stdin, "buffer", None)
        try:
            prompt = drop_line_end(stdin_bytes.read().decode("utf-8") if stdin_bytes else sys.stdin.read())
        except UnicodeDecodeError:
            raise UsageError("the prompt on stdin is not UTF-8 text") from None
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return prompt


def drop_line_end(text: str) -> str:
    return text.removesuffix("\n").removesuffix("\r")


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


# What from_pretrained raises for damaged files: a bad config field, a truncated or foreign weights file, ...
LOAD_ERRORS = (OSError, ValueError, RuntimeError, StrictDataclassError, SafetensorError)


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


def generate(args: argparse.Namespace, prompt: str, tokenizer, model) -> None:
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    options = dict(
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    if args.greedy:
        options.update(do_sample=False)
    else:
        options.update(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.seed is not None:
        set_seed(args.seed)

    print(prompt, end="", flush=True)
    if args.num_beams > 1:
        # generate() cannot stream beam search: the best beam is only known at the end.
        output = model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, **options)
        print(tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True), flush=True)
    else:
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, streamer=streamer,
                       **options)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        model_dir = Path(args.model)
        check_model_dir(model_dir)
        prompt = read_prompt(args)
        device = pick_device(args.device)
        tokenizer, model = load(model_dir, device, DTYPES[args.dtype])
        with torch.inference_mode():
            generate(args, prompt, tokenizer, model)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0
