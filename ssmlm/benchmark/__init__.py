"""The benchmark of scripts/bench.py (docs/benchmarks.md): speed, memory and FLOPs of the ssmlm models against
transformers' Llama and the public implementations of GSS and Mega-chunk, and Mega-chunk against full-attention
Mega. The model library never imports it.

    size.py         the size every contender is built at and the batch it is measured with
    contenders.py   the contenders by name (MODEL_BUILDERS, MODEL_NAMES), built by Contenders at one GSS shape
                    and matched to GSS's parameter count; describe_model
    public.py       the public implementations: lucidrains' GSS port, and transformers 4.x's Mega-chunk in a
                    worker process (WorkerContender; scripts/bench_worker_legacy_mega.py speaks the protocol)
    settings.py     Settings: what one run measures, as its JSON records it; the GPU's and --quick's defaults
    flops.py        FLOPs per forward, from the kernels' own `flops` and the blocks' `attention_shape`
    measure.py      a training step and a generation timed as closures, run interleaved after a warmup; the
                    matmul peak; peak memory in a process per (model, length)
    runs.py         the training and generation benchmarks, the machine, run_benchmarks
    compare.py      the regression figures and the comparison of two runs
    report.py       the markdown of a run
    mega_chunk.py   the `mega-chunk` command: Mega-chunk against full-attention Mega, time per token
    cli.py          the commands' options and their run, for `ssmlm-bench` (ssmlm/cli/bench.py, its entry point)
"""

from .contenders import MODEL_BUILDERS, Contenders
from .measure import make_training_step, random_tokens
from .settings import Settings

__all__ = ["MODEL_BUILDERS", "Contenders", "make_training_step", "random_tokens", "Settings"]
