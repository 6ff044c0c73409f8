#!/usr/bin/env python
"""Training time per token of Mega-chunk (attention inside chunks of c tokens) against full-attention Mega, at
growing sequence lengths: Mega-chunk's should stay flat, full attention's grow with the length.

    python scripts/bench_mega_chunk.py --out mega_chunk_bench.json [--lengths 1024 4096 16384] [--repeats 5]

Each step is forward + backward of the language-model loss on `--batch-size` sequences of each length (the same
batch at every length: a larger batch at the shorter lengths would share the EMA kernel, built once per call,
among more tokens and hide how the cost per token scales). Both models run in this one process, interleaved
(each repetition times every (model, length) once, after a warmup), so machine noise hits them alike. The table
gives the medians of the wall-clock time and of this process's CPU time per token, each also relative to the
same model at the first length; on a machine shared with other work the CPU time is the steadier of the two.
A full-attention length whose attention matrices would not fit in the free memory is skipped, and says so.
"""

import argparse
import json
import platform
import statistics
import time

import torch

from ssmlm import SSMLMConfig, SSMLMForCausalLM
from ssmlm.tooling.memory import add_host_allocator_option, keep_freed_host_memory

# Peak bytes of a full-attention training step per L² entry and per layer (scores, their biased and masked copies,
# softmax weights, gradients, masks): measured 31 B per L² with 2 layers at 8k tokens, rounded up.
FULL_ATTENTION_BYTES_PER_SCORE_PER_LAYER = 16


def build(chunk_size: int | None, args) -> SSMLMForCausalLM:
    torch.manual_seed(0)
    config = SSMLMConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        block_types=["mega"] * args.layers, mega_chunk_size=chunk_size, mega_max_positions=max(args.lengths),
    )
    return SSMLMForCausalLM(config).train()


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def train_step_seconds(model, length: int, batch_size: int) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one forward + backward."""
    ids = torch.randint(0, model.config.vocab_size, (batch_size, length))
    wall, cpu = time.perf_counter(), time.process_time()
    model(ids, labels=ids).loss.backward()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.zero_grad(set_to_none=True)
    return wall, cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="write the results as JSON here")
    add_host_allocator_option(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.host_allocator == "keep-freed":
        keep_freed_host_memory()

    models = {"mega-chunk": build(args.chunk_size, args), "mega": build(None, args)}
    runs, skipped = [], {}
    for length in args.lengths:
        needed = FULL_ATTENTION_BYTES_PER_SCORE_PER_LAYER * args.layers * args.batch_size * length ** 2
        if needed > available_bytes():
            skipped[("mega", length)] = f"skipped: full attention needs ~{needed / 2**30:.0f} GiB"
        runs += [(name, length) for name in models if (name, length) not in skipped]

    timings = {run: [] for run in runs}
    for name, length in runs:  # warmup: first-call allocations and thread start-up
        train_step_seconds(models[name], length, args.batch_size)
    for _ in range(args.repeats):
        for name, length in runs:
            timings[(name, length)].append(train_step_seconds(models[name], length, args.batch_size))

    results, first = [], {}
    for name, length in [(name, length) for name in models for length in args.lengths]:
        if (name, length) in skipped:
            results.append({"model": name, "length": length, "status": skipped[(name, length)]})
            continue
        tokens = args.batch_size * length
        wall, cpu = zip(*timings[(name, length)])
        per_token = {"wall": statistics.median(wall) / tokens, "cpu": statistics.median(cpu) / tokens}
        first.setdefault(name, per_token)
        results.append({
            "model": name, "length": length, "tokens_per_step": tokens,
            "wall_seconds_per_step": list(wall), "cpu_seconds_per_step": list(cpu),
            **{f"{kind}_us_per_token": value * 1e6 for kind, value in per_token.items()},
            **{f"{kind}_ratio_to_first_length": value / first[name][kind] for kind, value in per_token.items()},
        })

    print(f"{'model':<11} {'length':>7} {'wall us/token':>14} {'vs first':>9} {'CPU us/token':>13} {'vs first':>9}")
    for row in results:
        if "status" in row:
            print(f"{row['model']:<11} {row['length']:>7}  {row['status']}")
        else:
            print(f"{row['model']:<11} {row['length']:>7} {row['wall_us_per_token']:>14.1f} "
                  f"{row['wall_ratio_to_first_length']:>8.2f}x {row['cpu_us_per_token']:>13.1f} "
                  f"{row['cpu_ratio_to_first_length']:>8.2f}x")
    if args.out:
        machine = {"platform": platform.platform(), "processor": platform.processor(),
                   "torch": torch.__version__, "threads": torch.get_num_threads()}
        with open(args.out, "w") as file:
            json.dump({"settings": vars(args), "machine": machine, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
