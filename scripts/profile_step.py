#!/usr/bin/env python
"""Where the time of one step goes: torch.profiler over a training step (forward + backward + AdamW) or over
recurrent decoding steps (one token each, the cache carried), for any model of the benchmark's registry at the
benchmark's size (ssmlm/benchmark/contenders.py).

    python scripts/profile_step.py --model gss --phase train --length 4096
    python scripts/profile_step.py --model gss --phase decode --length 1024 --steps 32   # after a 1k prompt
    python scripts/profile_step.py --model gss --phase decode --batch 64   # 64 streams at once (bench decode-batch)
    python scripts/profile_step.py --model mega-chunk --phase train --length 16384 --trace trace.json

Prints the operators by self CPU time (with their input shapes, which is how a waste shows: an exponential over
a (channels, modes, length) tensor, a block of queries where one was needed) and optionally writes a Chrome trace
(chrome://tracing or ui.perfetto.dev). For decoding it first counts the operators one step dispatches (each
costs framework overhead, whatever its size). Warm-up steps run first, so one-off costs stay out of the table.
Freed host memory is kept for reuse as the trainer and the benchmark keep it (ssmlm/tooling/memory.py) unless
--host-allocator system, which shows what fresh pages cost: a zero-fill or a log-softmax far slower per element
at 16k tokens than at 1k.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from ssmlm.benchmark.batched import prefill, repeat_each_sequence
from ssmlm.benchmark.contenders import MODEL_BUILDERS, Contenders
from ssmlm.benchmark.measure import make_training_step
from ssmlm.cli.bench import add_host_allocator_option
from ssmlm.model.compat import returned_cache
from ssmlm.tooling.memory import keep_freed_host_memory


def profile_training(model, length: int, device: torch.device, warmup: int):
    step = make_training_step(model, length, device)
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        step()
    return profiler


class OperatorCount(TorchDispatchMode):
    """Counts the operators dispatched to the kernels (after autograd and composite decompositions: a linear layer
    on a 3-D input is a view, a transpose, a matmul and a view)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def profile_decoding(model, prompt_length: int, steps: int, batch: int, device: torch.device, warmup: int):
    """Decoding after one prompt, its cache repeated for `batch` streams as `ssmlm-bench decode-batch` does."""
    prefilled = prefill(model, prompt_length, device)
    repeat_each_sequence(next(iter(prefilled.values())), batch)
    token = torch.zeros(batch, 1, dtype=torch.long, device=device)

    def decode(count):
        nonlocal prefilled, token
        for _ in range(count):
            output = model(input_ids=token, **prefilled, use_cache=True)
            prefilled = returned_cache(output)
            token = output.logits[:, -1:].argmax(-1)

    decode(warmup)
    with OperatorCount() as operators:
        decode(1)
    print(f"operators dispatched by one decoding step: {operators.count}")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        decode(steps)
    return profiler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODEL_BUILDERS), default="gss")
    parser.add_argument("--phase", choices=["train", "decode"], default="train")
    parser.add_argument("--length", type=int, default=1024, help="training length, or the prompt before decoding")
    parser.add_argument("--steps", type=int, default=32, help="decoding steps profiled")
    parser.add_argument("--batch", type=int, default=1, help="streams decoded at once")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--trace", help="also write a Chrome trace here")
    add_host_allocator_option(parser)
    args = parser.parse_args(argv)
    if args.host_allocator == "keep-freed":
        keep_freed_host_memory()

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model = Contenders().build(args.model, device)
    if args.phase == "train":
        profiler = profile_training(model, args.length, device, warmup=2)
    else:
        profiler = profile_decoding(model, args.length, args.steps, args.batch, device, warmup=4)
    print(f"{args.model}, {args.phase}, length {args.length}, batch {args.batch}, {args.threads} threads")
    print(profiler.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                                 row_limit=args.rows))
    if args.trace:
        profiler.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
