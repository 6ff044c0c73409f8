"""The `long-stream` command: ms/token, resident memory and cache bytes every `every` tokens of one very long
generated stream. What it measures, and how, is LongStreamSettings's docstring (settings.py), its --help.
"""

import time
from collections.abc import Callable
from dataclasses import asdict

import psutil
import torch

from ..model.compat import returned_cache
from ..tooling.markdown import markdown_table
from .batched import cache_bytes, prefill
from .contenders import Contenders
from .measure import autocast, synchronize, torch_threads
from .report import format_ratio, format_value, machine_line
from .runs import finish_result, start_result
from .settings import LongStreamSettings


def stream(model, settings: LongStreamSettings, device: torch.device) -> list[dict]:
    """The records of one model's stream, one per `every` tokens."""
    process = psutil.Process()
    state = prefill(model, settings.prompt_length, device)
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    records = []
    with torch.no_grad(), autocast(device):
        for start in range(0, settings.tokens, settings.every):
            synchronize(device)
            began = time.perf_counter()
            for _ in range(min(settings.every, settings.tokens - start)):
                output = model(input_ids=token, **state, use_cache=True)
                state = returned_cache(output)
                token = output.logits[:, -1:].argmax(-1)
            synchronize(device)
            done = min(start + settings.every, settings.tokens)
            records.append({
                "tokens": done,
                "ms_per_token": 1000 * (time.perf_counter() - began) / (done - start),
                "resident_mib": process.memory_info().rss / 2**20,
                "cache_bytes": cache_bytes(next(iter(state.values()))),
            })
    return records


def run_long_stream(settings: LongStreamSettings, log: Callable[[str], None] = print) -> dict:
    device = torch.device(settings.device)
    with torch_threads(settings.threads):
        result = start_result(asdict(settings), device, settings.host_allocator) | {"streams": {}}
        contenders = Contenders()
        for name in settings.models:
            log(f"{name}: {settings.tokens:,} tokens after a {settings.prompt_length:,}-token prompt")
            model = contenders.build(name, device).eval()
            records = stream(model, settings, device)
            first, last = records[0], records[-1]
            result["streams"][name] = {
                "records": records,
                "ms_per_token_last_over_first": last["ms_per_token"] / first["ms_per_token"],
                "resident_mib_growth": last["resident_mib"] - first["resident_mib"],
                "cache_bytes_constant": len({record["cache_bytes"] for record in records}) == 1,
            }
            del model
    finish_result(result)
    return result


def to_markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        "# One long stream: ms/token and memory as the stream grows",
        "",
        machine_line(result),
        f"{settings['tokens']:,} greedy tokens after a {settings['prompt_length']:,}-token prompt, batch 1; each row "
        f"is the stretch of {settings['every']:,} tokens ending there.",
        "",
    ]
    for name, run in result["streams"].items():
        rows = [[f"{record['tokens']:,}", format_value(record["ms_per_token"]), f"{record['resident_mib']:,.0f}",
                 f"{record['cache_bytes'] / 2**20:,.2f}"] for record in run["records"]]
        lines += [f"## {name}", "",
                  f"Last stretch against the first: {format_ratio(run['ms_per_token_last_over_first'])} the time per "
                  f"token; resident memory {run['resident_mib_growth']:+,.0f} MiB; cache "
                  f"{'constant' if run['cache_bytes_constant'] else 'not constant'}.", "",
                  *markdown_table(["tokens", "ms/token", "resident MiB", "cache MiB"], rows), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
