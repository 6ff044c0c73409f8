"""The benchmark of `ssmlm-bench` (docs/benchmarks.md; its command line is ssmlm/cli/bench.py): speed, memory and FLOPs
of the ssmlm models against transformers' Llama and the public implementations of GSS and Mega-chunk, and Mega-chunk
against full-attention Mega. The model library never imports it.

    size.py         the size every contender is built at and the batch it is measured with
    contenders.py   the contenders by name (MODEL_BUILDERS; MODEL_NAMES below), built by Contenders at one GSS
                    shape and matched to GSS's parameter count; describe_model
    public.py       the public implementations: lucidrains' GSS port, and transformers 4.x's Mega-chunk in a
                    worker process (WorkerContender)
    legacy_mega_worker.py   that worker, run by path with transformers 4.x (never imported)
    settings.py     what each command measures, as its JSON records it: Settings (train, generate, all) with the
                    GPU's and --quick's defaults, and the settings of the other commands
    flops.py        FLOPs per forward, from the kernels' own `flops` and the blocks' `attention_shape`
    measure.py      a training step and a generation timed as closures, run interleaved after a warmup; the
                    matmul peak; peak memory in a process per (model, length)
    runs.py         the training and generation benchmarks, the machine, run_benchmarks
    compare.py      the regression figures and the comparison of two runs
    report.py       the markdown of a run
    mega_chunk.py   the `mega-chunk` command: Mega-chunk against full-attention Mega, time per token
    compiled.py     the `compile` command: torch.compile against eager
    batched.py      the `decode-batch` command: many streams decoded at once
    long_stream.py  the `long-stream` command: one very long generated stream
    harnesses.py    those four commands by name, with their settings, and their run

The names below are the command line's too, and free of torch, for `ssmlm-bench COMMAND --help`. The list above is
checked against the folder (tests/test_code_shape.py).
"""

import contextlib
from pathlib import Path

BASELINE = "llama"
MAMBA = "mamba"
# The public implementations ours are measured against (public.py).
GSS_PORT, LEGACY_MEGA = "gss-port", "mega-chunk-hf4"
WORKER_CONTENDERS = {LEGACY_MEGA}  # run in a worker process, not in the harness's

# Every contender, in the order of the tables: those of contenders.MODEL_BUILDERS (which checks that they are the
# same) and the public implementations.
MODEL_NAMES = ["gss", "gss-logits-loss", GSS_PORT, "gss-s4", "gss-dss-softmax", "gss-dlr", "gss-s5", "gss-liquid-s4",
               "gss-sgconv", "s4-lm", "h3", "h3-hybrid", "mega-chunk", LEGACY_MEGA, "hybrid", BASELINE, MAMBA]

# Where scripts/install_bench_contenders.sh installs them: relative to where the benchmark runs (a checkout's root),
# not to where ssmlm is installed; --contenders-dir names another.
CONTENDERS_DIR = Path(".bench-contenders")


def display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return str(path)
