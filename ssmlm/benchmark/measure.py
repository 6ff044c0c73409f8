"""The measurements: a training step and a generation timed as closures, run interleaved with a warmup; the matmul
peak timed among them; and the peak memory of a training step: on the CPU in a process of its own per (model,
length), on a GPU in the harness's process."""

import contextlib
import gc
import json
import math
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..model.compat import returned_cache
from ..model.modeling import SSMLMForCausalLM
from ..tooling.memory import is_out_of_memory, mentions_out_of_memory, process_peak_resident_mib
from . import WORKER_CONTENDERS
from .public import WorkerContender
from .settings import Settings
from .size import BATCH_SIZE, VOCAB_SIZE

MATMUL = "matmul"  # the name of the matmul timing among the contenders of each measurement


# ----------------------------------------------------------------------------------------------------------------
# Timing.


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on a GPU (the SSM's FFTs stay in float32 by design); plain float32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def torch_threads(count: int):
    """Run with `count` torch threads, then restore the previous count (the harness also runs inside tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_tokens(length: int, device: torch.device, vocab_size: int = VOCAB_SIZE,
                  batch_size: int = BATCH_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    return torch.randint(0, vocab_size, (batch_size, length), generator=generator).to(device)


def make_training_step(model: nn.Module | WorkerContender, length: int, device: torch.device,
                       batch_size: int = BATCH_SIZE, vocab_size: int = VOCAB_SIZE) -> Callable[[], dict]:
    """A closure that runs one forward + backward + AdamW step over `batch_size` x `length` tokens and returns its
    time."""
    if isinstance(model, WorkerContender):
        return model.training_step(length, batch_size)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = random_tokens(length, device, vocab_size, batch_size)
    # ssmlm's models compute the loss as ssmlm's trainer does, without the logits (the fused cross-entropy)
    options = {"return_logits": False} if isinstance(model, SSMLMForCausalLM) else {}

    def step() -> dict:
        synchronize(device)
        start = time.perf_counter()
        with autocast(device):
            loss = model(input_ids=tokens, labels=tokens, use_cache=False, **options).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return {"seconds": time.perf_counter() - start}

    return step


# aten's matrix products, and the positions of their two factors among the arguments.
MATRIX_PRODUCT_FACTORS = {
    torch.ops.aten.mm.default: (0, 1),
    torch.ops.aten.bmm.default: (0, 1),
    torch.ops.aten.addmm.default: (1, 2),
    torch.ops.aten.addmm_.default: (1, 2),
    torch.ops.aten.baddbmm.default: (1, 2),
}


class MatrixProductRecorder(TorchDispatchMode):
    """The shapes and dtype of the two factors of every matrix product aten runs (after autocast), in order."""

    def __init__(self):
        super().__init__()
        self.products: list[tuple[tuple[int, ...], tuple[int, ...], torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATRIX_PRODUCT_FACTORS:
            first, second = (args[position] for position in MATRIX_PRODUCT_FACTORS[func])
            self.products.append((tuple(first.shape), tuple(second.shape), first.dtype))
        return func(*args, **(kwargs or {}))


def make_matmuls_alone_timing(model: nn.Module, length: int, device: torch.device,
                              batch_size: int = BATCH_SIZE) -> Callable[[], dict]:
    """A closure that runs only the matrix products of one training step of `model`, as aten ran them in a step
    recorded at its first call (forward, backward and all; run_interleaved's warmup, which reports a model that
    fails there as it reports a failing step), each on contiguous random factors of its shapes and dtype: the time
    the step would take if everything else (the elementwise work, the FFTs, the norms, attention in a fused kernel,
    the optimizer, the framework) were free and every product ran as fast as alone. The factors are views of one
    buffer per position and dtype, so this holds two products' worth of memory, not a step's."""
    factors = []

    def record():
        recorder = MatrixProductRecorder()
        with recorder:
            make_training_step(model, length, device, batch_size)()
        buffers = {}
        for first, second, dtype in recorder.products:
            for position, shape in enumerate((first, second)):
                if buffers.get((position, dtype), torch.empty(0)).numel() < math.prod(shape):
                    buffers[position, dtype] = torch.randn(math.prod(shape), dtype=dtype, device=device)
        factors.extend(tuple(buffers[position, dtype][:math.prod(shape)].view(shape)
                             for position, shape in enumerate((first, second)))
                       for first, second, dtype in recorder.products)

    def timed() -> dict:
        if not factors:
            record()
        synchronize(device)
        start = time.perf_counter()
        for first, second in factors:
            torch.matmul(first, second)
        synchronize(device)
        return {"seconds": time.perf_counter() - start}

    return timed


def make_generation(model: nn.Module, prompt_length: int, new_tokens: int, device: torch.device,
                    vocab_size: int = VOCAB_SIZE) -> Callable[[], dict]:
    """A closure that prefills a prompt in one forward, then decodes `new_tokens` greedily, one forward per
    token reusing the cache (ssmlm's recurrent state, Llama's key/value cache, Mamba's state), as generate() does."""
    model.eval()
    prompt = random_tokens(prompt_length, device, vocab_size)

    def generate() -> dict:
        with torch.no_grad(), autocast(device):
            synchronize(device)
            start = time.perf_counter()
            output = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            token = output.logits[:, -1:].argmax(-1)
            synchronize(device)
            prefill_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(new_tokens):
                output = model(input_ids=token, **returned_cache(output), use_cache=True)
                token = output.logits[:, -1:].argmax(-1)
            synchronize(device)
            decode_seconds = time.perf_counter() - start
        return {"prefill_s": prefill_seconds, "decode_ms_per_token": 1000 * decode_seconds / new_tokens}

    return generate


def failure_status(error: BaseException) -> str:
    if is_out_of_memory(error):
        return "OOM"
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {first_line}"[:200]


def failed_measurement(error: BaseException) -> dict:
    """A peak-memory measurement that failed: its status (OOM or error) and why."""
    return {"status": failure_status(error), "reason": f"{type(error).__name__}: {error}"[:300]}


def run_interleaved(runs: dict[Hashable, Callable[[], dict]],
                    repeats: int) -> tuple[dict[Hashable, list[dict]], dict[Hashable, str]]:
    """Run every closure once as a warmup, then `repeats` rounds that run each once, so noise on the machine hits
    all contenders alike. The order rotates from round to round, so none always runs right after the same one.
    A closure that raises is reported and dropped; the others go on."""
    samples = {name: [] for name in runs}
    failures = {}
    active = list(runs)

    def attempt(name: Hashable, keep: bool):
        try:
            result = runs[name]()
        except Exception as error:  # a model under development may fail; measure the others regardless
            failures[name] = failure_status(error)
            active.remove(name)
            return
        if keep:
            samples[name].append(result)

    for name in list(active):
        attempt(name, keep=False)
    for round_index in range(repeats):
        shift = round_index % len(active) if active else 0
        for name in active[shift:] + active[:shift]:
            attempt(name, keep=True)
    return {name: values for name, values in samples.items() if name not in failures}, failures


def matmul_dtype(device: torch.device) -> torch.dtype:
    """The dtype the models' matmuls run in: float32 on the CPU, bf16 under autocast on a GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def make_matmul_timing(device: torch.device, size: int,
                       shape: tuple[int, int, int] | None = None) -> Callable[[], dict]:
    """A closure that times a square matmul of side `size` and returns its FLOP/s: the peak MFU is measured
    against. Given `shape` (rows, inner, columns), it times that product instead, repeated to the square's work.
    It runs in the rounds of every measurement beside the models, so it sees the same noise they do."""
    rows, inner, columns = shape or (size, size, size)
    a = torch.randn(rows, inner, device=device, dtype=matmul_dtype(device))
    b = torch.randn(inner, columns, device=device, dtype=matmul_dtype(device))
    # A GPU matmul is too short to time alone, and so is a small one anywhere.
    repeats = (20 if device.type == "cuda" else 1) * max(1, size**3 // (rows * inner * columns))

    def timed() -> dict:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        return {"flops_per_s": repeats * 2 * rows * inner * columns / (time.perf_counter() - start)}

    return timed


def run_interleaved_with_matmul(runs: dict[str, Callable[[], dict]], settings: Settings, device: torch.device,
                                matmul_rates: list[float]) -> tuple[dict[str, list[dict]], dict[str, str], float]:
    """`run_interleaved` with the matmul timing as one more contender: also returns the median matmul FLOP/s of
    these rounds, and adds its samples to `matmul_rates`."""
    runs = runs | {MATMUL: make_matmul_timing(device, settings.matmul_size)}
    samples, failures = run_interleaved(runs, settings.repeats)
    rates = [sample["flops_per_s"] for sample in samples.pop(MATMUL)]
    matmul_rates += rates
    return samples, failures, statistics.median(rates)


# ----------------------------------------------------------------------------------------------------------------
# Peak memory, one process per (model, length): a process's peak is a high-water mark, and running out of memory
# must cost only that one measurement.


def measure_training_peak_memory(name: str, length: int, settings: Settings) -> dict:
    """Two training steps on the CPU (AdamW allocates its state in the first); peak resident memory of this process
    (it includes Python and torch, `baseline_mib` before the model is built). Run by the `peak-memory` command, in a
    process of its own."""
    device = torch.device("cpu")
    baseline_mib = process_peak_resident_mib()
    torch.set_num_threads(settings.threads)
    if settings.memory_limit_mib:
        limit = settings.memory_limit_mib * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        step = make_training_step(settings.contenders().build(name, device, settings.threads), length, device,
                                  settings.training_batch(length))
        step()
        step()
    except Exception as error:
        return failed_measurement(error)
    return {"status": "ok", "peak_mib": process_peak_resident_mib(), "baseline_mib": baseline_mib}


def measure_gpu_peak_memory(model: nn.Module, length: int, batch: int, device: torch.device) -> dict:
    """Two training steps of a model of the harness's own process on a GPU, where the allocator's peak can be reset
    and running out of memory is an exception, not a killed process: the peak allocated over what was allocated
    before, plus the model's own tensors (what a process of its own would have measured)."""
    model.zero_grad(set_to_none=True)
    # cuBLAS allocates its workspace at this thread's first matmuls of each kind; made here, it is in `before` for
    # every measurement, not in the first one's peak alone.
    with autocast(device):
        torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)
    torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step = make_training_step(model, length, device, batch)
        step()
        step()
        peak = torch.cuda.max_memory_allocated(device) - before
    except Exception as error:
        return failed_measurement(error)
    finally:
        step = None  # its optimizer's state goes with it
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
    own = sum(tensor.numel() * tensor.element_size() for tensor in [*model.parameters(), *model.buffers()])
    return {"status": "ok", "peak_mib": (peak + own) / 2**20, "baseline_mib": 0.0}


def run_measurement_process(command: list[str]) -> dict:
    """Run a measuring child process; it prints its result as the last line of its output. A child killed by
    SIGKILL (the kernel's out-of-memory killer) or dying of an allocation failure is reported as OOM."""
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode == 0:
        return json.loads(child.stdout.strip().splitlines()[-1])
    if child.returncode == -signal.SIGKILL:
        return {"status": "OOM", "reason": "killed by SIGKILL (the out-of-memory killer, or a hard limit)"}
    if child.returncode < 0:
        return {"status": f"error: killed by {signal.Signals(-child.returncode).name}"}
    last_line = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
    if mentions_out_of_memory(last_line):
        return {"status": "OOM", "reason": last_line}
    return {"status": f"error: {last_line}"}


def peak_memory_command(name: str, length: int, settings: Settings) -> list[str]:
    """The `peak-memory` command of ssmlm-bench (ssmlm/cli/bench.py) for one (model, length), with the settings it needs."""
    gss_shape = ["--gss-shape", *map(str, settings.gss_shape)] if settings.gss_shape else []
    return [sys.executable, "-m", "ssmlm.cli.bench", "peak-memory", "--model", name, "--length", str(length),
            "--threads", str(settings.threads),
            "--memory-limit-mib", str(settings.memory_limit_mib), "--contenders-dir", str(settings.contenders_dir),
            "--tokens-per-step", str(settings.tokens_per_step), *gss_shape]


def measure_worker_peak_memory(name: str, length: int, settings: Settings) -> dict:
    """The peak of a contender that runs in a worker: a fresh worker, under the same address-space limit, that
    builds the model and runs two training steps, then reports its peak as measure_training_peak_memory does."""
    worker = None
    try:
        worker = settings.contenders().build(name, torch.device(settings.device), settings.threads,
                                             settings.memory_limit_mib)
        step = worker.training_step(length, settings.training_batch(length))
        step()
        step()
        return {"status": "ok"} | worker.request("memory")
    except Exception as error:
        return failed_measurement(error)
    finally:
        if worker is not None:
            worker.close()


def measure_peak_memory(name: str, length: int, settings: Settings, model: nn.Module | None = None) -> dict:
    """The training peak memory of `name` at `length`: a worker contender in its worker; on a GPU, `model` in this
    process; on the CPU, in a process of its own."""
    if name in WORKER_CONTENDERS:
        return measure_worker_peak_memory(name, length, settings)
    if settings.device == "cuda":
        return measure_gpu_peak_memory(model, length, settings.training_batch(length), torch.device("cuda"))
    return run_measurement_process(peak_memory_command(name, length, settings))
