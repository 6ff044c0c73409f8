"""`ssmlm-bench` (also `python -m ssmlm.cli.bench`): speed, memory and FLOPs of the ssmlm models against
transformers' Llama (the logic is ssmlm/benchmark/; docs/benchmarks.md explains the figures). Its peak-memory
measurements start this module in fresh processes.

The parsers are built without torch, so that `ssmlm-bench --help` and `ssmlm-bench COMMAND --help` answer at once: the
first parser knows only the commands; each command's options are parsed by a second one, built from the benchmark's
settings, which are free of torch too. What runs a command is imported when it runs.

Exit codes: 0 done; 1 compare (or --compare) found a figure that got worse; 2 a problem with the options or a saved
run given to compare, found before anything was measured or written; 74 writing the results failed (a full disk,
...); 130 stopped by Ctrl-C.
"""

import argparse
import inspect
import json
import math
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from ..benchmark import CONTENDERS_DIR, GSS_PORT, LEGACY_MEGA, MODEL_NAMES, WORKER_CONTENDERS, display_path
from ..benchmark.harnesses import HARNESSES, run_harness
from ..benchmark.settings import GPU_DEFAULTS, QUICK, Settings, default_device
from .entry import CHECK_FAILED, ArgumentParser, CommandError, run

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
    """The commands only: `COMMAND --help` and the options are build_options_parser's."""
    commands = "\n".join(f"  {name:<13} {what}" for name, what in COMMANDS.items())
    parser = ArgumentParser(prog=prog, description=f"{DESCRIPTION}\n\ncommands:\n{commands}",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=f"`{prog} COMMAND --help` lists the options of a command.")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands above")
    parser.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


# The choices of a run that the command line sets, each left to Settings's default (or QUICK's, or the GPU's) when
# not given.
CHOSEN = ("lengths", "prompt_lengths", "new_tokens", "repeats", "matmul_size", "tokens_per_step", "threads")
DEVICE_HELP = "default: cuda if available, else cpu"
THREADS_HELP = "torch threads (default: torch's choice)"


def build_options_parser(prog: str = "ssmlm-bench") -> argparse.ArgumentParser:
    """Every command with its options."""
    parser = ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for phase in ("train", "generate", "all"):
        add_phase_options(commands.add_parser(phase, help=COMMANDS[phase], description=COMMANDS[phase]))

    compare = commands.add_parser("compare", help=COMMANDS["compare"], description=COMMANDS["compare"])
    compare.add_argument("old", type=Path)
    compare.add_argument("new", type=Path)
    compare.add_argument("--tolerance", type=float, default=0.1)

    for name, settings_class in HARNESSES.items():
        harness = commands.add_parser(name, help=COMMANDS[name], description=inspect.getdoc(settings_class),
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        add_settings_options(harness, settings_class)
        add_output_options(harness)

    child = commands.add_parser("peak-memory", help=COMMANDS["peak-memory"])
    child.add_argument("--model", choices=sorted(set(MODEL_NAMES) - WORKER_CONTENDERS), required=True)
    child.add_argument("--length", type=int, required=True)
    child.add_argument("--threads", type=int)
    child.add_argument("--memory-limit-mib", type=int, default=0)
    child.add_argument("--contenders-dir", type=Path, default=CONTENDERS_DIR)
    child.add_argument("--gss-shape", type=int, nargs=2)
    child.add_argument("--tokens-per-step", type=int, default=0)
    return parser


def add_phase_options(parser: argparse.ArgumentParser) -> None:
    """The options of train, generate and all."""
    parser.add_argument("--lengths", type=int, nargs="+",
                        help="training sequence lengths (default 1024 4096 16384; 2048 8192 16384 65536 on a GPU)")
    parser.add_argument("--tokens-per-step", type=int,
                        help="training tokens per step: the batch is this over the length, at least 1 (default: "
                             "batch 1 on the CPU, 65536 tokens on a GPU; 1 gives batch 1)")
    parser.add_argument("--prompt-lengths", type=int, nargs="+", help="default 1024 8192 32768")
    parser.add_argument("--new-tokens", type=int, help="tokens decoded after each prompt (default 256)")
    parser.add_argument("--repeats", type=int, help="measured repetitions per figure, after a warmup (default 5)")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=MODEL_NAMES,
                        help=f"default: all; {GSS_PORT} and {LEGACY_MEGA}, the public implementations, are "
                             "skipped with the reason when they are not installed")
    parser.add_argument("--contenders-dir", type=Path, default=CONTENDERS_DIR,
                        help="where the public implementations are installed (the README's Benchmarks section "
                             "says how): DIR/gss-port (unless gated-state-spaces-pytorch is installed in this "
                             f"environment) and DIR/transformers4 (default {display_path(CONTENDERS_DIR)})")
    parser.add_argument("--gss-shape", type=int, nargs=2, metavar=("H", "N"),
                        help="GSS's SSM width and modes (default d/4 and 2H, SSMLMConfig's), also for GSS with the "
                             "other kernels (default: each paper's own modes); the other contenders are matched to "
                             "the count that results. 256 512 is the GSS port's default shape")
    parser.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    parser.add_argument("--matmul-size", type=int, help="side of the matmul timed for the peak (default 2048 on "
                                                        "the CPU, 8192 on a GPU)")
    parser.add_argument("--memory-limit-mib", type=int,
                        help="address-space limit of each peak-memory process on the CPU, so one that needs too "
                             "much fails alone as OOM (default: MemAvailable at start; 0: none)")
    parser.add_argument("--threads", type=int, help=f"{THREADS_HELP}; one is far faster on a busy machine, but "
                                                    "compare runs only at the same count")
    add_host_allocator_option(parser)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes to check the harness: lengths 128 256, 16 new tokens, 2 repeats")
    add_output_options(parser)
    parser.add_argument("--compare", type=Path, metavar="OLD_JSON",
                        help="compare with a saved run; exit status 1 if a figure got worse")
    parser.add_argument("--tolerance", type=float, default=0.1, help="relative change allowed (default 0.1)")


def option_fields(settings_class) -> list:
    """The settings fields a user sets (a field marked `option: False` is only recorded)."""
    return [field for field in fields(settings_class) if field.metadata.get("option", True)]


def add_settings_options(parser: argparse.ArgumentParser, settings_class) -> None:
    """One option per settable field of a harness's settings, with the field's default; the device's and the
    threads' ask torch, so those two are left unset, for the settings to resolve when they are made."""
    for field in option_fields(settings_class):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "host_allocator":
            add_host_allocator_option(parser)
        elif field.name == "device":
            parser.add_argument(flag, choices=["cpu", "cuda"], help=DEVICE_HELP)
        elif field.name == "threads":
            parser.add_argument(flag, type=int, help=THREADS_HELP)
        else:
            default = field.default if field.default_factory is MISSING else field.default_factory()
            if field.name == "models":
                parser.add_argument(flag, nargs="+", choices=MODEL_NAMES, default=default)
            elif isinstance(default, list):
                parser.add_argument(flag, type=int, nargs="+", default=default)
            else:
                parser.add_argument(flag, type=type(default), default=default)


def add_host_allocator_option(parser: argparse.ArgumentParser):
    """--host-allocator for the benchmark and profiling scripts: measure what the trainer runs, or the default
    (ssmlm/tooling/memory.py)."""
    parser.add_argument("--host-allocator", choices=["keep-freed", "system"], default="keep-freed",
                        help="on the CPU, keep freed memory mapped for reuse, as the trainer does (default), or "
                             "leave glibc's malloc as it is: large blocks mapped afresh at every allocation, which "
                             "slows every model's long sequences. A kept heap holds the high-water mark of all the "
                             "process ran: for several large models in one run, 'system' may be the one that fits "
                             "(the README's Benchmarks section)")


def add_output_options(parser: argparse.ArgumentParser):
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the markdown tables here (always printed)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    from ..tooling.memory import available_memory_mib

    device = args.device or default_device()
    on_gpu = device == "cuda"
    defaults = (GPU_DEFAULTS if on_gpu else {}) | (QUICK if args.quick else {})
    chosen = options_given(args, CHOSEN)
    memory_limit = args.memory_limit_mib
    if memory_limit is None:
        # RLIMIT_AS counts address space, not resident memory, and CUDA reserves far more of it than it uses.
        memory_limit = 0 if on_gpu else available_memory_mib()
    return Settings(
        phase=args.command,
        device=device,
        models=args.models,
        **(defaults | chosen),
        memory_limit_mib=memory_limit,
        contenders_dir=args.contenders_dir,
        gss_shape=gss_shape(args),
        host_allocator=args.host_allocator,
        quick=args.quick,
    )


def options_given(args: argparse.Namespace, names) -> dict:
    """The options among `names` that the command line set; the others are left to the settings' defaults."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def gss_shape(args: argparse.Namespace) -> tuple[int, int] | None:
    return tuple(args.gss_shape) if args.gss_shape else None


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every count and length of the command line is at least 1 (--memory-limit-mib at least 0, 0 being none), and
    the tolerance a finite fraction: refused now, in one line, rather than run with a default or fail later."""
    for name, value in vars(args).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        smallest = 0 if name == "memory_limit_mib" else 1
        if name == "tolerance":
            if not (math.isfinite(value) and value >= 0):
                parser.error(f"--tolerance must be a fraction of 0 or more, got {value}")
        elif values and all(type(item) is int for item in values) and min(values) < smallest:
            parser.error(f"--{name.replace('_', '-')} must be at least {smallest}, got {min(values)}")


def read_run(path: Path) -> dict:
    """A run saved by --out, checked to be one: CommandError (exit code 2) otherwise."""
    try:
        run_result = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, ValueError):
        raise CommandError(f"{path} is not JSON: give a file written by ssmlm-bench --out") from None
    if not (isinstance(run_result, dict) and isinstance(run_result.get("figures"), dict)
            and isinstance(run_result.get("matmul_peak"), dict)):
        raise CommandError(f"{path} is not a run saved by ssmlm-bench train/generate/all --out (it has no figures)")
    return run_result


def check_output(path: Path | None, option: str) -> None:
    """An output file's folder must exist, found out before the benchmark runs, not after."""
    if path is None:
        return
    if path.is_dir():
        raise CommandError(f"{option} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise CommandError(f"{option} {path}: the folder {path.parent} does not exist")


def print_comparison(old: dict, new: dict, tolerance: float) -> int:
    from ..benchmark.compare import compare_results

    lines, worse = compare_results(old, new, tolerance)
    print("\n".join(lines))
    return CHECK_FAILED if worse else 0


def write_outputs(result: dict, markdown: str, args: argparse.Namespace):
    print(markdown)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown)


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The parsed command, its numbers and output paths checked first: its exit code."""
    if args.command == "peak-memory":  # the benchmark's own child process, with the numbers it was given
        from ..benchmark.measure import measure_training_peak_memory

        settings = Settings(**options_given(args, ["threads"]), memory_limit_mib=args.memory_limit_mib,
                            contenders_dir=args.contenders_dir, gss_shape=gss_shape(args),
                            tokens_per_step=args.tokens_per_step)
        print(json.dumps(measure_training_peak_memory(args.model, args.length, settings)))
        return 0
    check_numbers(parser, args)
    if args.command == "compare":
        return print_comparison(read_run(args.old), read_run(args.new), args.tolerance)
    check_output(args.out, "--out")
    check_output(args.markdown, "--markdown")
    if args.command in HARNESSES:
        settings_class = HARNESSES[args.command]
        settings = settings_class(**options_given(args, [field.name for field in option_fields(settings_class)]))
        write_outputs(*run_harness(args.command, settings), args)
        return 0

    from ..benchmark.report import to_markdown
    from ..benchmark.runs import run_benchmarks

    old_run = read_run(args.compare) if args.compare else None  # read now: not found after the whole benchmark
    started = time.perf_counter()
    result = run_benchmarks(settings_from_args(args), log=lambda message: print(
        f"[bench {time.perf_counter() - started:6.1f} s] {message}", flush=True))
    write_outputs(result, to_markdown(result), args)
    if old_run is not None:
        return print_comparison(old_run, result, args.tolerance)
    return 0


def bench_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    chosen = parser.parse_args(argv)
    options_parser = build_options_parser(parser.prog)
    return run_command(options_parser, options_parser.parse_args([chosen.command, *chosen.options]))


def main(argv: list[str] | None = None, prog: str = "ssmlm-bench") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: bench_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
