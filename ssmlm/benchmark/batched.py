"""The `decode-batch` command: generated tokens/s when B sequences decode at once, the cache each sequence holds,
and decoding MFU. What it measures, and how, is BatchedSettings's docstring (settings.py), its --help.
"""

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import nn
from torch.nn import functional as F

from ..model.compat import returned_cache
from ..tooling.markdown import markdown_table
from .contenders import BASELINE, Contenders, skipped_at_length
from .flops import generation_flops
from .measure import (
    autocast,
    make_matmul_timing,
    matmul_dtype,
    random_tokens,
    run_interleaved,
    synchronize,
    torch_threads,
)
from .report import format_ratio, format_value, machine_line
from .runs import finish_result, start_result
from .settings import BatchedSettings
from .size import HIDDEN_SIZE

BIG_MATMUL, DECODING_MATMUL, LINEAR_LAYERS = "matmul", "decoding-shaped matmul", "linear layers"


def layer_tensors(cache) -> list[tuple[dict, object]]:
    """(holder, key) of every tensor in the layers of a transformers cache: attributes of a layer, or entries of a
    layer's dicts (Mamba's convolution and recurrent states, by state index)."""
    found = []
    for layer in cache.layers:
        for name, value in vars(layer).items():
            if torch.is_tensor(value):
                found.append((vars(layer), name))
            elif isinstance(value, dict):
                found += [(value, key) for key, item in value.items() if torch.is_tensor(item)]
    return found


def cache_bytes(cache) -> int:
    """Bytes of the tensors a cache holds: ssmlm's counts its own; transformers' caches keep them in their layers."""
    if hasattr(cache, "num_bytes"):
        return cache.num_bytes()
    return sum(holder[key].numel() * holder[key].element_size() for holder, key in layer_tensors(cache))


def prefill(model, prompt_length: int, device: torch.device) -> dict:
    """The cache keyword argument (`returned_cache`) after one sequence's prompt."""
    model.eval()
    with torch.no_grad(), autocast(device):
        return returned_cache(model(input_ids=random_tokens(prompt_length, device), use_cache=True, logits_to_keep=1))


def repeat_each_sequence(cache, batch: int) -> None:
    """generate()'s `batch_repeat_interleave`; the layers of transformers' Mamba cache lack it (a layer fails before
    any changes), so their state tensors are repeated here."""
    try:
        cache.batch_repeat_interleave(batch)
    except AttributeError:
        for holder, key in layer_tensors(cache):
            if holder[key].dim() > 0 and holder[key].shape[0] == 1:
                holder[key] = holder[key].repeat_interleave(batch, dim=0)


def make_batched_decoding(model, prefilled: dict, batch: int, new_tokens: int,
                          device: torch.device) -> Callable[[], dict]:
    """A closure that decodes `new_tokens` greedy steps for `batch` copies of the prefilled sequence at once."""
    (key, base), = prefilled.items()

    def decode() -> dict:
        cache = copy.deepcopy(base)
        repeat_each_sequence(cache, batch)
        state = {key: cache}
        token = torch.randint(0, model.config.vocab_size, (batch, 1), generator=torch.Generator().manual_seed(batch))
        token = token.to(device)
        with torch.no_grad(), autocast(device):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(new_tokens):
                output = model(input_ids=token, **state, use_cache=True)
                state = returned_cache(output)
                token = output.logits[:, -1:].argmax(-1)
            synchronize(device)
        return {"seconds": time.perf_counter() - start}

    return decode


def make_linear_layers_timing(model, batch: int, new_tokens: int, device: torch.device) -> Callable[[], dict]:
    """A closure that runs only the matmuls of `new_tokens` decoding steps for `batch` sequences: every nn.Linear
    of the model, in its order, on a (batch, in_features) input with the layer's own weights."""
    layers = [module for module in model.modules() if isinstance(module, nn.Linear)]
    # In the dtype the matmuls run in (bf16 under a GPU's autocast), so no cast is timed with them.
    inputs = [torch.randn(batch, layer.in_features, device=device, dtype=matmul_dtype(device)) for layer in layers]
    flops_per_step = sum(2 * batch * layer.in_features * layer.out_features for layer in layers)

    def timed() -> dict:
        with torch.no_grad(), autocast(device):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(new_tokens):
                for layer, x in zip(layers, inputs):
                    F.linear(x, layer.weight, layer.bias)
            synchronize(device)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "flops_per_s": new_tokens * flops_per_step / seconds}

    return timed


def run_batched_decoding(settings: BatchedSettings, log: Callable[[str], None] = print) -> dict:
    device = torch.device(settings.device)
    with torch_threads(settings.threads):
        result = start_result(asdict(settings), device, settings.host_allocator)
        models, skipped = Contenders().build_all(settings.models, device, settings.threads)
        for name, status in skipped.items():
            log(f"{name}: {status}")
        runs, per_sequence, failures = {}, {}, {}
        for name, model in models.items():
            for batch in settings.batch_sizes:
                if isinstance(model, nn.Module):  # not a contender in a worker process
                    runs[name, LINEAR_LAYERS, batch] = make_linear_layers_timing(model, batch, settings.new_tokens,
                                                                                 device)
            for prompt_length in settings.prompt_lengths:
                if status := skipped_at_length(model, prompt_length, training=False):
                    failures[name, prompt_length] = status
                    continue
                try:
                    prefilled = prefill(model, prompt_length, device)
                except Exception as error:  # one model that cannot prefill does not stop the others
                    failures[name, prompt_length] = f"error: {type(error).__name__}: {error}"[:200]
                    continue
                per_sequence[name, prompt_length] = cache_bytes(next(iter(prefilled.values())))
                for batch in settings.batch_sizes:
                    runs[name, prompt_length, batch] = make_batched_decoding(model, prefilled, batch,
                                                                             settings.new_tokens, device)
        runs[BIG_MATMUL] = make_matmul_timing(device, settings.matmul_size)
        # A decoding step's feed-forward shape: (B × d) by (d × 4d) at the largest B.
        runs[DECODING_MATMUL] = make_matmul_timing(device, settings.matmul_size,
                                                   (max(settings.batch_sizes), HIDDEN_SIZE, 4 * HIDDEN_SIZE))
        log(f"{len(runs)} runs (decoding, linear layers alone, matmuls), interleaved, {settings.repeats} repeats")
        samples, run_failures = run_interleaved(runs, settings.repeats)
    finish_result(result)
    peak = statistics.median(sample["flops_per_s"] for sample in samples.pop(BIG_MATMUL))
    shaped = statistics.median(sample["flops_per_s"] for sample in samples.pop(DECODING_MATMUL))
    result["matmul_peak"] = {"size": settings.matmul_size, "flops_per_s": peak}
    result["decoding_matmul"] = {"shape": [max(settings.batch_sizes), HIDDEN_SIZE, 4 * HIDDEN_SIZE],
                                 "flops_per_s": shaped, "fraction_of_peak": shaped / peak}

    rows, baseline = [], {}
    for name in settings.models:
        for prompt_length in settings.prompt_lengths:
            for batch in settings.batch_sizes:
                row = {"model": name, "prompt_length": prompt_length, "batch": batch}
                status = (skipped.get(name) or failures.get((name, prompt_length))
                          or run_failures.get((name, prompt_length, batch)))
                if status:
                    rows.append(row | {"status": status})
                    continue
                seconds = [sample["seconds"] for sample in samples[name, prompt_length, batch]]
                tokens_per_s = batch * settings.new_tokens / statistics.median(seconds)
                linear = samples.get((name, LINEAR_LAYERS, batch))
                flops_per_token = generation_flops(models[name], prompt_length, settings.new_tokens)[1]
                if name == BASELINE:
                    baseline[prompt_length, batch] = tokens_per_s
                rows.append(row | {
                    "status": "ok",
                    "seconds_repeats": seconds,
                    "tokens_per_s": tokens_per_s,
                    "ms_per_step": 1000 * statistics.median(seconds) / settings.new_tokens,
                    "cache_bytes_per_sequence": per_sequence[name, prompt_length],
                    "decode_flops_per_token": flops_per_token,
                    "mfu": flops_per_token * tokens_per_s / peak,
                })
                if linear:
                    rows[-1] |= {
                        "linear_layers_ms_per_step": 1000 * statistics.median(sample["seconds"] for sample in linear)
                        / settings.new_tokens,
                        "linear_layers_mfu": statistics.median(sample["flops_per_s"] for sample in linear) / peak,
                    }
    for row in rows:
        if row.get("status") == "ok" and (row["prompt_length"], row["batch"]) in baseline:
            row["speedup_vs_baseline"] = row["tokens_per_s"] / baseline[row["prompt_length"], row["batch"]]
    result["results"] = rows
    return result


def to_markdown(result: dict) -> str:
    rows = []
    for row in result["results"]:
        if row["status"] != "ok":
            rows.append([row["model"], str(row["prompt_length"]), str(row["batch"]), row["status"], *[""] * 6])
            continue
        linear = ([format_value(row["linear_layers_ms_per_step"]), f"{row['linear_layers_mfu']:.1%}"]
                  if "linear_layers_mfu" in row else ["-", "-"])
        rows.append([row["model"], str(row["prompt_length"]), str(row["batch"]), format_value(row["tokens_per_s"]),
                     format_ratio(row.get("speedup_vs_baseline")), format_value(row["ms_per_step"]),
                     f"{row['cache_bytes_per_sequence'] / 2**20:,.2f}", f"{row['mfu']:.1%}", *linear])
    settings, shaped = result["settings"], result["decoding_matmul"]
    lines = [
        "# Batched decoding: many streams at once",
        "",
        machine_line(result),
        f"{settings['new_tokens']} greedy steps for B sequences at once after one prefilled prompt; medians of "
        f"{settings['repeats']} interleaved repetitions. MFU against the {settings['matmul_size']}² matmul of the "
        f"same run ({result['matmul_peak']['flops_per_s'] / 1e9:.1f} GFLOP/s); a {shaped['shape'][0]}×"
        f"{shaped['shape'][1]} by {shaped['shape'][1]}×{shaped['shape'][2]} matmul, a decoding step's shape, "
        f"reached {shaped['fraction_of_peak']:.0%} of it. \"Linear layers alone\": the model's projections and "
        "logits with its weights at that batch, nothing else: their ms per step, and the MFU of their FLOPs.",
        "",
        *markdown_table(["model", "prompt", "batch", "tokens/s", f"× {BASELINE}", "ms/step", "cache MiB/seq", "MFU",
                         "linear layers alone, ms/step", "their MFU"], rows),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"
