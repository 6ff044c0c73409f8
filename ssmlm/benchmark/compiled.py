"""The `compile` command: torch.compile (inductor, `dynamic=True`) against eager, training step time and decoding
ms per token. What it measures, and how, is CompileSettings's docstring (settings.py), its --help.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from ..tooling.markdown import markdown_table
from .contenders import Contenders
from .measure import make_generation, make_training_step, run_interleaved, torch_threads
from .report import format_ratio, format_value, machine_line
from .runs import finish_result, start_result
from .settings import CompileSettings

CPU = torch.device("cpu")
MODES = ("eager", "compiled")


def first_call_timed(run: Callable[[], dict], seconds: dict, key) -> Callable[[], dict]:
    """`run`, with the wall time of its first call (a compiled run's compile) kept in seconds[key]."""
    def timed() -> dict:
        start = time.perf_counter()
        result = run()
        seconds.setdefault(key, time.perf_counter() - start)
        return result
    return timed


def run_compile_benchmark(settings: CompileSettings) -> dict:
    with torch_threads(settings.threads):
        result = start_result(asdict(settings), CPU, settings.host_allocator)
        # Every model's forward is the same code object to Dynamo, which keeps at most recompile_limit graphs per
        # code object (then runs it eager): several models, each in training, prefill and decoding, need more.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        contenders, first_calls, runs = Contenders(), {}, {}
        for name in settings.models:
            eager = contenders.build(name, CPU)
            # A second copy for the compiled run, so the two never share a module's compiled state.
            compiled = torch.compile(contenders.build(name, CPU), dynamic=True)
            for mode, model in zip(MODES, (eager, compiled)):
                for length in settings.lengths:
                    key = (name, mode, "train", length)
                    runs[key] = first_call_timed(make_training_step(model, length, CPU), first_calls, key)
                key = (name, mode, "decode", settings.prompt_length)
                runs[key] = first_call_timed(make_generation(model, settings.prompt_length, settings.new_tokens,
                                                             CPU), first_calls, key)
        samples, failures = run_interleaved(runs, settings.repeats)
    finish_result(result)

    rows = []
    for (name, mode, phase, length), run in runs.items():
        row = {"model": name, "mode": mode, "phase": phase, "length": length,
               "first_call_seconds": first_calls.get((name, mode, phase, length))}
        if (name, mode, phase, length) in failures:
            rows.append(row | {"status": failures[name, mode, phase, length]})
            continue
        taken = samples[name, mode, phase, length]
        if phase == "train":
            seconds = [sample["seconds"] for sample in taken]
            row |= {"seconds_per_step": seconds,
                    "tokens_per_s": settings.batch_size * length / statistics.median(seconds)}
        else:
            row |= {"ms_per_token_repeats": [sample["decode_ms_per_token"] for sample in taken],
                    "ms_per_token": statistics.median(sample["decode_ms_per_token"] for sample in taken)}
        rows.append(row)
    for row in rows:  # compiled against eager, the same model and figure
        if row["mode"] == "compiled":
            eager = next(other for other in rows if other["mode"] == "eager" and
                         (other["model"], other["phase"], other["length"]) == (row["model"], row["phase"],
                                                                               row["length"]))
            figure = "tokens_per_s" if row["phase"] == "train" else "ms_per_token"
            if figure in row and figure in eager:
                speed = row[figure] / eager[figure]
                row["speedup_over_eager"] = speed if figure == "tokens_per_s" else 1 / speed
    result["results"] = rows
    return result


def to_markdown(result: dict) -> str:
    rows = []
    for row in result["results"]:
        figure = "tokens/s" if row["phase"] == "train" else "ms/token"
        value = row.get("tokens_per_s", row.get("ms_per_token"))
        where = f"{row['length']} tokens" if row["phase"] == "train" else f"after {row['length']}"
        rows.append([row["model"], row["phase"], where, row["mode"],
                     row.get("status") or f"{format_value(value)} {figure}",
                     format_ratio(row["speedup_over_eager"]) if "speedup_over_eager" in row else "",
                     f"{row['first_call_seconds']:.1f} s" if row.get("first_call_seconds") else ""])
    settings = result["settings"]
    lines = [
        "# torch.compile (inductor, dynamic=True) against eager",
        "",
        machine_line(result),
        f"Training: forward + backward + AdamW, batch {settings['batch_size']}. Decoding: greedy, "
        f"{settings['new_tokens']} tokens after the prompt. Medians of {settings['repeats']} interleaved "
        "repetitions after the first call (the compile, whose time is given).",
        "",
        *markdown_table(["model", "phase", "length", "mode", "median", "speed-up", "first call"], rows),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"
