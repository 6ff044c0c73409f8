"""`ssmlm-eval-length` (also `python -m ssmlm.cli.eval_length`): length extrapolation, the GSS paper's Figure 9:
perplexity of saved models at 1x..16x their training length, by position in the context, in the convolutional (window)
and streaming (recurrent) regimes (the logic is ssmlm/evaluation/extrapolation/; the README's Length extrapolation
section explains the outputs).

    ssmlm-eval-length --model runs/gss --data books=data/corpus/books/test.jsonl --train-length 512 --out DIR

Exit codes: 0 the two regimes agree; 1 they disagree somewhere (the results are written all the same); 2 a problem
with the options, a model or the data, found before anything was written (an --out that is a file is refused before
the evaluation runs); 74 writing the results failed (a full disk, ...); 130 stopped by Ctrl-C.
"""

import argparse
import sys
from importlib.util import find_spec
from pathlib import Path

from ..evaluation import (DEFAULT_CACHE_DIR, DEFAULT_HUB_SPLIT, DEFAULT_STREAM_CHUNK, DEFAULT_TEXT_COLUMN,
                          MIN_STREAM_CHUNKS, REGIMES, default_baseline_stride)
from .entry import CHECK_FAILED, ArgumentParser, CommandError, run


def build_parser(prog: str = "ssmlm-eval-length") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Perplexity of saved ssmlm models at 1x..16x their training length, by position in the context, "
                    "in the convolutional (window) and streaming (recurrent) regimes. The README's Length "
                    "extrapolation section explains the outputs.",
    )
    parser.add_argument("--model", required=True, nargs="+", metavar="DIR",
                        help="directories written by save_pretrained, each with its tokenizer")
    parser.add_argument("--data", required=True, nargs="+", action="extend", metavar="DOMAIN=SOURCE",
                        help="evaluation documents of one domain: a .jsonl/.txt file or glob (e.g. "
                             "books=data/corpus/books/test.jsonl) or a Hub dataset, code=hub:NAME[:split] (split "
                             f"'{DEFAULT_HUB_SPLIT}' by default)")
    parser.add_argument("--train-length", type=int, metavar="N",
                        help="the models' training length: lengths are N x --multipliers, and plots mark N")
    parser.add_argument("--multipliers", type=int, nargs="+", default=[1, 2, 4, 8, 16], metavar="K",
                        help="multiples of --train-length to evaluate (default 1 2 4 8 16)")
    parser.add_argument("--lengths", type=int, nargs="+", metavar="L",
                        help="context lengths to evaluate, instead of --train-length x --multipliers")
    parser.add_argument("--bucket-size", type=int, default=1024, metavar="N",
                        help="positions per bucket of the per-position perplexity (default 1024)")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES),
                        help="window: one convolutional forward of the whole window; streaming: chunks with the "
                             "recurrent state carried (default both)")
    parser.add_argument("--stream-chunk", type=int, default=DEFAULT_STREAM_CHUNK, metavar="N",
                        help="at most N tokens per forward in the streaming regime and the truncated pass (default "
                             f"{DEFAULT_STREAM_CHUNK}); streaming reads every window in at least {MIN_STREAM_CHUNKS} "
                             "chunks")
    parser.add_argument("--baseline-context", type=int, metavar="C",
                        help="the context gain's truncated context: the same tokens are scored again with at most C "
                             "tokens before each (default --train-length; without either, no context gain)")
    parser.add_argument("--baseline-stride", type=int, metavar="S",
                        help="positions scored per truncated piece: each position from C on sees C - S to C - 1 "
                             "tokens; smaller is closer to exactly C and costs C/S forwards of C tokens per C "
                             "positions (default C/4)")
    parser.add_argument("--max-window-length", type=int, metavar="L",
                        help="run the window regime only up to this length (longer ones are streamed only)")
    parser.add_argument("--max-documents", type=int, metavar="N",
                        help="at most N windows per domain and length, a seeded sample (default: all)")
    parser.add_argument("--concatenate-documents", action="store_true",
                        help="join all documents into one stream and cut it into windows (the output says so); by "
                             "default only documents with at least L tokens are scored")
    parser.add_argument("--text-column", default=DEFAULT_TEXT_COLUMN,
                        help="the text field of JSONL records and Hub datasets")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                        help=f"where datasets keeps its caches (default {DEFAULT_CACHE_DIR}, as training)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', ...")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes results.json, results.md, perplexity.png")
    return parser


def settings_from(args: argparse.Namespace):
    """Check the numbers that argparse's types cannot (CommandError: one line, exit code 2); the Settings."""
    if args.lengths is None and args.train_length is None:
        raise CommandError("give --train-length (with --multipliers) or --lengths")
    lengths = sorted(set(args.lengths or [args.train_length * multiplier for multiplier in args.multipliers]))
    positive = {"--lengths / --multipliers": lengths[0], "--train-length": args.train_length,
                "--bucket-size": args.bucket_size, "--stream-chunk": args.stream_chunk,
                "--max-window-length": args.max_window_length, "--max-documents": args.max_documents,
                "--baseline-context": args.baseline_context, "--baseline-stride": args.baseline_stride}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise CommandError(f"{flag} must be positive, got {value}")
    domains = [spec.partition("=")[0] for spec in args.data]
    if len(set(domains)) < len(domains):
        raise CommandError(f"--data: each domain once, got {', '.join(domains)}")
    context = args.baseline_context or args.train_length
    if context and context > lengths[0]:
        flag = "--baseline-context" if args.baseline_context else "--baseline-context (by default --train-length)"
        raise CommandError(f"{flag} {context} is longer than the evaluation length {lengths[0]}: the truncated context "
                         "must fit in every window")
    if args.baseline_stride and not context:
        raise CommandError("--baseline-stride needs --baseline-context or --train-length")
    stride = args.baseline_stride or (default_baseline_stride(context) if context else None)
    if context and stride > context:
        raise CommandError(f"--baseline-stride {stride} is longer than the truncated context {context}")
    from ..evaluation.extrapolation import Settings

    return Settings(
        lengths=lengths,
        train_length=args.train_length,
        bucket_size=args.bucket_size,
        regimes=[regime for regime in REGIMES if regime in args.regimes],
        stream_chunk=args.stream_chunk,
        max_window_length=args.max_window_length,
        max_documents=args.max_documents,
        concatenate_documents=args.concatenate_documents,
        baseline_context=context,
        baseline_stride=stride,
    )


def check_out(out: Path) -> None:
    """--out must be a directory that exists or can be created, found out now, not after the evaluation."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == out and not out.is_dir():
        raise CommandError(f"--out {out} is a file; give a directory for results.json, results.md and perplexity.png")
    if not existing.is_dir():
        raise CommandError(f"--out {out}: {existing} is a file, not a directory")


def evaluate_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    settings = settings_from(args)
    out = Path(args.out)
    check_out(out)
    if find_spec("matplotlib") is None:  # found out now, not after hours of evaluation
        raise CommandError("the plot needs matplotlib: pip install 'ssmlm[plots]' (or matplotlib)")

    # Imported after the checks, so --help and a bad option are quick.
    import datasets
    from transformers.utils import logging as transformers_logging

    from ..evaluation.extrapolation import evaluate, parse_data_spec, write_outputs
    from ..tooling.saved_models import pick_device

    datasets.disable_progress_bars()  # one progress bar: ours
    transformers_logging.disable_progress_bar()
    device = pick_device(args.device)
    specs = [parse_data_spec(text) for text in args.data]
    results = evaluate([Path(path) for path in args.model], specs, settings, device, args.text_column,
                       args.cache_dir)
    summary = write_outputs(results, out)
    print(f"{summary}\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'perplexity.png'}")
    return CHECK_FAILED if summary.startswith("DISAGREE") else 0


def main(argv: list[str] | None = None, prog: str = "ssmlm-eval-length") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: evaluate_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
