"""The markdown of a run: the machine, the models, the training and generation tables, and ours against the public
implementations. It reads the result as saved in JSON, so a saved run renders as a fresh one does."""

import itertools

from ..tooling.markdown import markdown_table
from .contenders import BASELINE, PUBLIC_COUNTERPARTS, TARGET_SPEEDUP_VS_PUBLIC
from .size import BATCH_SIZE, MEGA_CHUNK_SIZE


def format_value(value: float | None, status: str = "") -> str:
    if value is None:
        return status or "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def summarise_blocks(blocks: list[str]) -> str:
    """["gss", "gss", "gss", "attention"] -> "3 gss, attention"."""
    runs = [(kind, len(list(group))) for kind, group in itertools.groupby(blocks)]
    return ", ".join(kind if count == 1 else f"{count} {kind}" for kind, count in runs)


def public_comparison_table(result: dict) -> list[str]:
    """Each of our models against the public implementation of it, at each length: × public is how many times
    faster ours trains; the target is TARGET_SPEEDUP_VS_PUBLIC."""
    train = {(row["model"], row["length"]): row for row in result["train"]}
    rows = []
    for (name, length), row in train.items():
        counterpart = PUBLIC_COUNTERPARTS.get(name)
        if counterpart not in result["models"]:
            continue  # not asked for
        theirs = train.get((counterpart, length))
        if theirs is None:  # skipped (not installed) or failed to build: the Models table says why
            their_figure = result["models"][counterpart]["status"].split(":")[0]
        else:
            their_figure = format_value(theirs.get("tokens_per_s"), theirs["status"])
        ratio = row.get("speedup_vs_public")
        met = "-" if ratio is None else ("yes" if ratio >= TARGET_SPEEDUP_VS_PUBLIC else "no")
        rows.append([name, str(length), format_value(row.get("tokens_per_s"), row["status"]), counterpart,
                     their_figure, format_ratio(ratio), met])
    if not rows:
        return []
    return (["### Against the public implementations", ""]
            + markdown_table(["model", "length", "tokens/s", "public", "its tokens/s", "× public",
                              f"≥ {TARGET_SPEEDUP_VS_PUBLIC}×"], rows)
            + [f"× public: how many times faster than the public implementation of the same model, measured in the "
               f"same rounds (gss: lucidrains' gated-state-spaces-pytorch; mega-chunk: transformers 4.x "
               f"MegaForCausalLM, c = {MEGA_CHUNK_SIZE}); the target is {TARGET_SPEEDUP_VS_PUBLIC}× at every length.",
               ""])


def machine_line(result: dict) -> str:
    """The machine and the conditions of a run, for the header of its markdown."""
    machine = result["machine"]
    return (f"{machine['device_name']}, torch threads: {machine['torch_threads']}; torch {machine['torch']}; tree "
            f"{machine['git_revision']}; {result['created']}; load average "
            f"{machine['load_average_at_start'][0]:.1f} at start, {machine['load_average_at_end'][0]:.1f} at end; "
            f"host allocator: {machine['host_allocator']}.")


def to_markdown(result: dict) -> str:
    machine, settings, matmul = result["machine"], result["settings"], result["matmul_peak"]
    lines = [
        "# ssmlm benchmark",
        "",
        f"{machine['device_name']}, {machine['nproc']} CPUs, torch threads: {machine['torch_threads']}, "
        f"device {machine['device']}, {machine['compute_dtype']}; torch {machine['torch']}, transformers "
        f"{machine['transformers']}; tree {machine['git_revision']}; {result['created']}; load average "
        f"{machine['load_average_at_start'][0]:.1f} at start, {machine['load_average_at_end'][0]:.1f} at end; "
        f"host allocator: {machine.get('host_allocator', 'system default')}.",
        f"Matmul peak: {matmul['flops_per_s'] / 1e9:.0f} GFLOP/s ({matmul['size']}² {matmul['dtype']}, median of "
        f"{len(matmul['flops_per_s_repeats'])} timed among the models; each MFU is against the matmuls timed in its "
        f"own rounds). Generation at batch {BATCH_SIZE}; medians of {settings['repeats']} "
        f"interleaved repetitions after a warmup; × {BASELINE}: how many times faster than {BASELINE}.",
        "",
        "## Models",
        "",
    ]
    gss_parameters = result["models"].get("gss", {}).get("parameters")
    model_rows = []
    for name, info in result["models"].items():
        if info["status"] != "ok":
            model_rows.append([name, info["status"], "", "", ""])
            continue
        versus_gss = format_ratio(info["parameters"] / gss_parameters) if gss_parameters else "-"
        blocks = summarise_blocks(info["blocks"])
        if info.get("implementation"):
            blocks += f" ({info['implementation']})"
        model_rows.append([name, f"{info['parameters']:,}", f"{info['non_embedding_parameters']:,}", versus_gss,
                           blocks])
    lines += markdown_table(["model", "parameters", "non-embedding", "vs gss", "blocks"], model_rows)

    if "train" in result:
        lines += ["## Training: forward + backward + AdamW step", ""]
        rows = []
        for row in result["train"]:
            memory = row["peak_memory"]
            peak = format_value(memory.get("peak_mib"), memory["status"])
            batch = str(row.get("batch", BATCH_SIZE))  # runs before the batch was recorded ran at BATCH_SIZE
            if row["status"] != "ok":
                rows.append([row["model"], str(row["length"]), batch, row["status"], "", "", "", peak])
                continue
            rows.append([row["model"], str(row["length"]), batch, format_value(row["tokens_per_s"]),
                         format_ratio(row["speedup_vs_baseline"]), format_percent(row["mfu"]),
                         format_ratio(row.get("step_over_matmuls_alone")), peak])
        lines += markdown_table(["model", "length", "batch", "tokens/s", f"× {BASELINE}", "MFU",
                                 "step / its matmuls", "peak MiB"], rows)
        lines += ["Step / its matmuls: the step's time over that of its own matrix products (their shapes recorded "
                  "in a step) run alone on contiguous random factors in the same rounds; 1× would be a step that is "
                  "all fast-path matmuls.", ""]
        if settings["device"] == "cpu":
            lines += ["Peak MiB: peak resident memory of a process that ran only that model at that length, "
                      "Python and torch included.", ""]
        else:
            lines += ["Peak MiB: the GPU allocator's peak over two training steps, over what was allocated before "
                      "them, plus the model's own weights.", ""]
        lines += public_comparison_table(result)

    if "generate" in result:
        lines += [f"## Generation: prefill, then {settings['new_tokens']} new tokens, greedy, with the cache", ""]
        rows = []
        for row in result["generate"]:
            if row["status"] != "ok":
                rows.append([row["model"], str(row["prompt_length"]), row["status"]] + [""] * 5)
                continue
            rows.append([row["model"], str(row["prompt_length"]), format_value(row["prefill_s"]),
                         format_ratio(row["prefill_speedup_vs_baseline"]), format_value(row["decode_ms_per_token"]),
                         format_ratio(row["decode_speedup_vs_baseline"]), format_percent(row["prefill_mfu"]),
                         format_percent(row["decode_mfu"])])
        lines += markdown_table(["model", "prompt", "prefill s", f"× {BASELINE}", "ms/token", f"× {BASELINE}",
                                 "prefill MFU", "decode MFU"], rows)

    uncounted = sorted({kind for phase in ("train", "generate") for row in result.get(phase, [])
                        for kind in row.get("flops_not_counted_for", [])})
    if uncounted:
        lines.append(f"FLOPs (and MFU) count the linear layers and SSMs of {', '.join(uncounted)} but not their "
                     "attention: no formula for it here yet.")
    return "\n".join(lines).rstrip("\n") + "\n"
