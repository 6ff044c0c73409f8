"""The benchmarks: training (tokens/s, peak memory, MFU) and generation (prefill, ms per token, MFU) of every
contender at every length, interleaved, and the run that holds them with the machine it ran on."""

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

import transformers

from ..tooling.memory import keep_freed_host_memory
from .compare import regression_figures
from .contenders import BASELINE, PUBLIC_COUNTERPARTS, describe_model, skipped_at_length
from .flops import generation_flops, training_flops_per_token
from .measure import (
    make_generation,
    make_matmuls_alone_timing,
    make_training_step,
    matmul_dtype,
    measure_peak_memory,
    run_interleaved_with_matmul,
    torch_threads,
)
from .public import WorkerContender
from .settings import Settings

MATMULS_ALONE = "matrix products alone"  # beside each model's name: its training step's products timed alone


def speedup(value: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """How many times faster than the baseline (> 1: faster)."""
    if value is None or baseline is None:
        return None
    return value / baseline if higher_is_better else baseline / value


def benchmark_training(models: dict[str, nn.Module | WorkerContender], settings: Settings, device: torch.device,
                       matmul_rates: list[float], log: Callable[[str], None]) -> list[dict]:
    skipped = {(name, length): status for length in settings.lengths for name, model in models.items()
               if (status := skipped_at_length(model, length, training=True))}
    jobs = [(name, length) for length in settings.lengths for name in models if (name, length) not in skipped]
    # Memory only: CPU contention does not change it, so a quick run measures in parallel to save time. On a GPU
    # the harness's process measures it, one model at a time.
    workers = os.cpu_count() if settings.quick and device.type == "cpu" else 1
    log(f"peak memory: {len(jobs)} measurements, {workers} at a time")
    with ThreadPoolExecutor(workers) as pool:
        memory = dict(zip(jobs, pool.map(lambda job: measure_peak_memory(*job, settings, models[job[0]]), jobs)))

    rows = []
    for length in settings.lengths:
        batch = settings.training_batch(length)
        # Skip what ran out of memory when measured (on the CPU, in its own process): here it could take the harness
        # down, or on a GPU only fail again.
        runs = {name: make_training_step(model, length, device, batch) for name, model in models.items()
                if (name, length) in memory and memory[name, length]["status"] != "OOM"}
        # Each in-process model's matrix products alone, in the same rounds (make_matmuls_alone_timing).
        matmuls_alone = {(name, MATMULS_ALONE): make_matmuls_alone_timing(models[name], length, device, batch)
                         for name in runs if isinstance(models[name], nn.Module)}
        log(f"training at {length} tokens, batch {batch}: {', '.join(runs)}, and their matrix products alone")
        samples, failures, peak_flops = run_interleaved_with_matmul(runs | matmuls_alone, settings, device,
                                                                    matmul_rates)
        alone_seconds = {name: statistics.median(sample["seconds"] for sample in samples.pop((name, kind)))
                         for name, kind in matmuls_alone if (name, kind) in samples}
        tokens_per_s = {name: [batch * length / s["seconds"] for s in values] for name, values in samples.items()}
        medians = {name: statistics.median(values) for name, values in tokens_per_s.items()}
        for name, model in models.items():
            row = {"model": name, "length": length, "batch": batch}
            if (name, length) in skipped:
                rows.append(row | {"status": skipped[name, length], "peak_memory": {"status": "skipped"}})
                continue
            row["peak_memory"] = memory[name, length]
            if name in medians:
                flops_per_token, uncounted = training_flops_per_token(model, length)
                row |= {
                    "status": "ok",
                    "tokens_per_s": medians[name],
                    "tokens_per_s_repeats": tokens_per_s[name],
                    "speedup_vs_baseline": speedup(medians[name], medians.get(BASELINE), higher_is_better=True),
                    "flops_per_token": flops_per_token,
                    "mfu": None if flops_per_token is None else flops_per_token * medians[name] / peak_flops,
                    "matmul_flops_per_s": peak_flops,
                    "flops_not_counted_for": uncounted,
                }
                if name in alone_seconds:
                    step_seconds = batch * length / medians[name]
                    row |= {"matmuls_alone_seconds": alone_seconds[name],
                            "step_over_matmuls_alone": step_seconds / alone_seconds[name]}
                if name in PUBLIC_COUNTERPARTS:  # None where the public implementation did not run
                    counterpart = PUBLIC_COUNTERPARTS[name]
                    row |= {"public_counterpart": counterpart, "speedup_vs_public": speedup(
                        medians[name], medians.get(counterpart), higher_is_better=True)}
            else:
                row["status"] = failures.get(name, "OOM")
            rows.append(row)
    return rows


def benchmark_generation(models: dict[str, nn.Module | WorkerContender], settings: Settings, device: torch.device,
                         matmul_rates: list[float], log: Callable[[str], None]) -> list[dict]:
    rows = []
    new_tokens = settings.new_tokens
    for prompt_length in settings.prompt_lengths:
        unsupported = {name: status for name, model in models.items()
                       if (status := getattr(model, "generation_unsupported", None)
                           or skipped_at_length(model, prompt_length, training=False))}
        runs = {name: make_generation(model, prompt_length, new_tokens, device) for name, model in models.items()
                if name not in unsupported}
        log(f"generation after {prompt_length} prompt tokens: {', '.join(runs)}")
        samples, failures, peak_flops = run_interleaved_with_matmul(runs, settings, device, matmul_rates)
        figures = {
            name: {key: [s[key] for s in values] for key in ("prefill_s", "decode_ms_per_token")}
            for name, values in samples.items()
        }
        medians = {name: {key: statistics.median(v) for key, v in f.items()} for name, f in figures.items()}
        baseline = medians.get(BASELINE, {})
        for name, model in models.items():
            row = {"model": name, "prompt_length": prompt_length, "new_tokens": new_tokens}
            if name not in medians:
                rows.append(row | {"status": unsupported.get(name) or failures[name]})
                continue
            prefill_flops, decode_flops, uncounted = generation_flops(model, prompt_length, new_tokens)
            prefill_s, decode_ms = medians[name]["prefill_s"], medians[name]["decode_ms_per_token"]
            rows.append(row | {
                "status": "ok",
                "prefill_s": prefill_s,
                "prefill_s_repeats": figures[name]["prefill_s"],
                "decode_ms_per_token": decode_ms,
                "decode_ms_per_token_repeats": figures[name]["decode_ms_per_token"],
                "prefill_speedup_vs_baseline": speedup(prefill_s, baseline.get("prefill_s"), higher_is_better=False),
                "decode_speedup_vs_baseline": speedup(decode_ms, baseline.get("decode_ms_per_token"),
                                                      higher_is_better=False),
                "prefill_flops": prefill_flops,
                "decode_flops_per_token": decode_flops,
                "prefill_mfu": prefill_flops / prefill_s / peak_flops,
                "decode_mfu": decode_flops / (decode_ms / 1000) / peak_flops,
                "matmul_flops_per_s": peak_flops,
                "flops_not_counted_for": uncounted,
            })
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The machine, recorded with every run (this one's and the Mega-chunk harness's).


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The commit of the tree measured, "+dirty" with uncommitted changes: what a later comparison is against. None
    where ssmlm runs from no git checkout (an installed wheel)."""
    package = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=package,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine_info(device: torch.device) -> dict:
    return {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),  # as set for this run
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "compute_dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_revision": git_revision(),
        "load_average_at_start": os.getloadavg(),
    }


def use_host_allocator(choice: str, device: torch.device) -> str:
    """Keep freed host memory on the CPU if `choice` is "keep-freed", in this process and in the measuring
    processes it starts (peak memory, the transformers 4.x worker); returns the allocator, as the result says."""
    kept = device.type == "cpu" and choice == "keep-freed" and keep_freed_host_memory()
    return "glibc, freed memory kept" if kept else "system default"


def start_result(settings: dict, device: torch.device, host_allocator: str) -> dict:
    """A run's JSON as it starts: when, on what machine (with the host allocator it now uses), with what settings."""
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(device), "settings": settings}
    result["machine"]["host_allocator"] = use_host_allocator(host_allocator, device)
    return result


def finish_result(result: dict) -> None:
    result["machine"]["load_average_at_end"] = os.getloadavg()


def run_benchmarks(settings: Settings, log: Callable[[str], None] = print) -> dict:
    with torch_threads(settings.threads):
        device = torch.device(settings.device)
        result = start_result(settings.to_json(), device, settings.host_allocator)
        matmul_rates = []  # every matmul timing of the run: the peak the header gives
        models, skipped = settings.contenders().build_all(settings.models, device, settings.threads)
        try:
            result["models"] = {name: describe_model(model) | {"status": "ok"} for name, model in models.items()}
            result["models"] |= {name: {"status": status} for name, status in skipped.items()}
            for name, status in skipped.items():
                log(f"{name}: {status}")
            if settings.phase in ("train", "all"):
                result["train"] = benchmark_training(models, settings, device, matmul_rates, log)
            if settings.phase in ("generate", "all"):
                result["generate"] = benchmark_generation(models, settings, device, matmul_rates, log)
        finally:
            for model in models.values():
                if isinstance(model, WorkerContender):
                    model.close()
    finish_result(result)
    result["matmul_peak"] = {
        "size": settings.matmul_size,
        "dtype": str(matmul_dtype(device)).removeprefix("torch."),
        "flops_per_s": statistics.median(matmul_rates),
        "flops_per_s_repeats": matmul_rates,
    }
    result["figures"] = regression_figures(result)
    return result
