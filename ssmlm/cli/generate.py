"""`ssmlm-generate` (also `python -m ssmlm.cli.generate` and `python generate.py` in a checkout): continue a prompt
with a saved ssmlm model.

    ssmlm-generate --model DIR --prompt "Once upon a time" --max-new-tokens 50 --seed 0

The prompt comes from `--prompt TEXT`, `--prompt-file FILE`, or stdin (`--prompt -`, or no `--prompt` with text
piped in); the one line end that closes a file or `echo`'s output is dropped. The prompt is printed, then the
continuation is streamed as it is produced.

Exit codes: 0 done; 2 a problem the user can fix (a wrong directory, a model that does not load, an empty prompt,
an option out of range, ...), as one line on stderr; 130 stopped by Ctrl-C.
"""

import argparse
import math
import sys
from pathlib import Path

from .entry import ArgumentParser, CommandError, run

DTYPES = ("auto", "float32", "bfloat16", "float16")
MAX_SEED = 2**32 - 1  # numpy's seeds, which set_seed seeds too, are 32-bit
MAX_BEAMS = 256  # each beam is a sequence decoded alongside the others: far past this, memory runs out first


def build_parser(prog: str = "ssmlm-generate") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog, description="Continue a prompt with a saved ssmlm model, streaming the text to stdout.",
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
    parser.add_argument("--seed", type=int, help=f"random seed, for reproducible sampling (0 to {MAX_SEED})")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="penalty > 1 discourages repeating "
                        "tokens (default 1.0: none)")
    parser.add_argument("--num-beams", type=int, default=1, help=f"beam search width, at most {MAX_BEAMS} (default "
                        "1); beam search prints the text when done instead of streaming it")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', "
                        "'cuda:1', ...")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype (default float32; "
                        "'auto' keeps the checkpoint's)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject out-of-range numbers the way argparse rejects bad types (one line, exit code 2)."""
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        parser.error(f"--temperature must be a positive number, got {args.temperature} (use --greedy for "
                     f"deterministic output)")
    if args.top_k < 0:
        parser.error("--top-k must be 0 or more")
    if not 0 < args.top_p <= 1:  # also false for NaN
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if not (math.isfinite(args.repetition_penalty) and args.repetition_penalty > 0):
        parser.error(f"--repetition-penalty must be a positive number, got {args.repetition_penalty}")
    if not 1 <= args.num_beams <= MAX_BEAMS:
        parser.error(f"--num-beams must be from 1 to {MAX_BEAMS}, got {args.num_beams}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be from 0 to {MAX_SEED}, got {args.seed}")


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt != "-":
        prompt = args.prompt
    elif args.prompt_file is not None:
        try:
            prompt = drop_line_end(Path(args.prompt_file).read_bytes().decode("utf-8"))
        except OSError as error:
            raise CommandError(f"cannot read prompt file {args.prompt_file}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise CommandError(f"prompt file {args.prompt_file} is not UTF-8 text") from None
    elif args.prompt is None and sys.stdin.isatty():
        raise CommandError("no prompt: pass --prompt TEXT or --prompt-file FILE, or pipe the prompt on stdin")
    else:
        # Decode the bytes ourselves: text-mode stdin may be set to replace or escape invalid UTF-8.
        stdin_bytes = getattr(sys.stdin, "buffer", None)
        try:
            prompt = drop_line_end(stdin_bytes.read().decode("utf-8") if stdin_bytes else sys.stdin.read())
        except UnicodeDecodeError:
            raise CommandError("the prompt on stdin is not UTF-8 text") from None
    if not prompt.strip():
        raise CommandError("the prompt is empty")
    return prompt


def drop_line_end(text: str) -> str:
    return text.removesuffix("\n").removesuffix("\r")


def generate(args: argparse.Namespace, prompt: str, tokenizer, model) -> None:
    from transformers import TextStreamer, set_seed

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


def generate_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    args = parser.parse_args(argv)
    check_args(parser, args)

    # Imported after parsing, so --help is quick.
    import torch

    from ..tooling.saved_models import load, pick_device

    model_dir = Path(args.model)
    prompt = read_prompt(args)
    device = pick_device(args.device)
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    tokenizer, model = load(model_dir, device, dtype)
    with torch.inference_mode():
        generate(args, prompt, tokenizer, model)


def main(argv: list[str] | None = None, prog: str = "ssmlm-generate") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: generate_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
