"""`ssmlm-bench` (also `python -m ssmlm.cli.bench` and `python scripts/bench.py` in a checkout): speed, memory and
FLOPs of the ssmlm models against transformers' Llama (the logic is ssmlm/benchmark/). Its peak-memory measurements
start this module in fresh processes.

The commands are listed here, free of torch, so that `ssmlm-bench --help` answers at once; each command's own
options are built by ssmlm/benchmark/cli.py, also free of torch (`COMMAND --help` answers at once too), which imports
it only to run a command.

Exit codes: 0 done; 1 compare (or --compare) found a figure that got worse; 2 a problem with the options or a saved
run given to compare, found before anything was measured or written; 74 writing the results failed (a full disk,
...); 130 stopped by Ctrl-C.
"""

import argparse
import sys

from .entry import ArgumentParser, run

DESCRIPTION = """\
Benchmarks of the ssmlm models against transformers' Llama (sdpa attention), and against the public implementations
of GSS and Mega-chunk where they are installed (see the README's Benchmarks section):

    training    tokens/s of forward + backward + AdamW step at several sequence lengths, and the peak memory of
                each (model, length)
    generation  prefill time of a prompt and ms per new token after prompts of several lengths
    MFU         analytic FLOPs per token / time, over the matmul FLOP/s of this machine measured in the same run

All contenders are measured in one process and interleaved, so machine noise hits them alike; figures are medians,
with every repetition kept in the JSON. `compare` flags the figures of a run that got worse than a saved one."""

COMMANDS = {
    "train": "training tokens/s, peak memory and MFU",
    "generate": "prefill time, ms per new token and MFU",
    "all": "train, then generate",
    "compare": "compare two saved runs; exit status 1 if a figure got worse",
    "mega-chunk": "training time per token of Mega-chunk against full-attention Mega at growing lengths",
    "compile": "torch.compile (inductor, dynamic=True) against eager: training tokens/s and decoding ms/token",
    "decode-batch": "generated tokens/s of B streams decoded at once, cache bytes per sequence and decoding MFU",
    "long-stream": "ms/token, resident memory and cache bytes every N tokens of one very long generated stream",
    "peak-memory": "one peak-memory measurement on the CPU, as JSON (the benchmark runs it in a process of its own)",
}


def build_parser(prog: str = "ssmlm-bench") -> argparse.ArgumentParser:
    """The commands only: `COMMAND --help` and the options are the full parser's (ssmlm/benchmark/cli.py)."""
    commands = "\n".join(f"  {name:<13} {what}" for name, what in COMMANDS.items())
    parser = ArgumentParser(prog=prog, description=f"{DESCRIPTION}\n\ncommands:\n{commands}",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=f"`{prog} COMMAND --help` lists the options of a command.")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands above")
    parser.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def bench_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    from ..benchmark import cli

    return cli.bench_from_command_line(cli.build_parser(parser.prog), [args.command, *args.options])


def main(argv: list[str] | None = None, prog: str = "ssmlm-bench") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: bench_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
