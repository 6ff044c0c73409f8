"""The `mega-chunk` command: training time per token of Mega-chunk against full-attention Mega at growing
sequence lengths. What it measures, and how, is MegaChunkSettings's docstring (settings.py), its --help.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from ..model.configuration import SSMLMConfig
from ..model.modeling import SSMLMForCausalLM
from ..tooling.markdown import markdown_table
from ..tooling.memory import available_memory_mib
from .measure import random_tokens, run_interleaved, torch_threads
from .report import format_ratio, format_value, machine_line
from .runs import finish_result, start_result
from .settings import MegaChunkSettings

# Peak bytes of a full-attention training step per L² entry and per layer (scores, their biased and masked copies,
# softmax weights, gradients, masks): measured with 2 layers at 8k tokens, rounded up.
FULL_ATTENTION_BYTES_PER_SCORE_PER_LAYER = 16
CPU = torch.device("cpu")


def build(settings: MegaChunkSettings, chunk_size: int | None) -> SSMLMForCausalLM:
    """Mega blocks attending inside chunks of `chunk_size` tokens, or over the whole prefix (None)."""
    torch.manual_seed(0)
    config = SSMLMConfig(
        vocab_size=settings.vocab_size, hidden_size=settings.hidden_size, num_hidden_layers=settings.layers,
        block_types=["mega"] * settings.layers,
        block_options={"mega": {"chunk_size": chunk_size, "max_positions": max(settings.lengths)}},
    )
    return SSMLMForCausalLM(config).train()


def make_forward_backward(model: SSMLMForCausalLM, length: int, settings: MegaChunkSettings) -> Callable[[], dict]:
    """A closure that runs one forward + backward of the LM loss and returns its wall-clock and CPU seconds."""
    tokens = random_tokens(length, CPU, settings.vocab_size, settings.batch_size)

    def step() -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        model(input_ids=tokens, labels=tokens).loss.backward()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        model.zero_grad(set_to_none=True)
        return {"wall_seconds": wall, "cpu_seconds": cpu}

    return step


def full_attention_skip(length: int, settings: MegaChunkSettings) -> str | None:
    """Why full attention is not run at `length`: its attention matrices would not fit in the free memory."""
    needed = FULL_ATTENTION_BYTES_PER_SCORE_PER_LAYER * settings.layers * settings.batch_size * length**2
    available = available_memory_mib() * 2**20  # 0 where it is not known
    if available and needed > available:
        return f"skipped: full attention needs ~{needed / 2**30:.0f} GiB"
    return None


def run_mega_chunk(settings: MegaChunkSettings) -> dict:
    with torch_threads(settings.threads):
        result = start_result(asdict(settings), CPU, settings.host_allocator)
        models = {"mega-chunk": build(settings, settings.chunk_size), "mega": build(settings, None)}
        not_run = {("mega", length): reason for length in settings.lengths
                   if (reason := full_attention_skip(length, settings))}
        runs = {(name, length): make_forward_backward(model, length, settings)
                for length in settings.lengths for name, model in models.items() if (name, length) not in not_run}
        samples, failures = run_interleaved(runs, settings.repeats)
    finish_result(result)
    not_run |= failures

    rows, first = [], {}
    for name in models:
        for length in settings.lengths:
            if (name, length) in not_run:
                rows.append({"model": name, "length": length, "status": not_run[name, length]})
                continue
            tokens = settings.batch_size * length
            wall = [sample["wall_seconds"] for sample in samples[name, length]]
            cpu = [sample["cpu_seconds"] for sample in samples[name, length]]
            per_token = {"wall": statistics.median(wall) / tokens, "cpu": statistics.median(cpu) / tokens}
            first.setdefault(name, per_token)
            rows.append({
                "model": name, "length": length, "tokens_per_step": tokens,
                "wall_seconds_per_step": wall, "cpu_seconds_per_step": cpu,
                **{f"{kind}_us_per_token": value * 1e6 for kind, value in per_token.items()},
                **{f"{kind}_ratio_to_first_length": value / first[name][kind] for kind, value in per_token.items()},
            })
    result["results"] = rows
    return result


def to_markdown(result: dict) -> str:
    rows = []
    for row in result["results"]:
        if "status" in row:
            rows.append([row["model"], str(row["length"]), row["status"], "", "", ""])
            continue
        rows.append([row["model"], str(row["length"]), format_value(row["wall_us_per_token"]),
                     format_ratio(row["wall_ratio_to_first_length"]), format_value(row["cpu_us_per_token"]),
                     format_ratio(row["cpu_ratio_to_first_length"])])
    settings = result["settings"]
    lines = [
        "# Mega-chunk against full-attention Mega: training time per token",
        "",
        machine_line(result),
        f"Forward + backward of the LM loss, batch {settings['batch_size']}, c = {settings['chunk_size']}; medians of "
        f"{settings['repeats']} interleaved repetitions after a warmup; vs first: relative to the same model at the "
        "first length.",
        "",
        *markdown_table(["model", "length", "wall µs/token", "vs first", "CPU µs/token", "vs first"], rows),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"
