"""The regression check: the figures a change to the models can make worse, each with its good direction, and a
comparison of two runs that flags the figures that got worse."""

from .contenders import BASELINE
from .report import format_value


def regression_figures(result: dict) -> dict[str, dict]:
    """A flat map 'phase/model/length/figure' -> {value, better}. A failed measurement has value None and its
    status, so a figure that turns into an OOM counts as worse."""
    figures = {}

    def add(prefix: str, row: dict, fields: dict[str, str]):
        for field, better in fields.items():
            if "speedup" in field and row["model"] == BASELINE:
                continue  # the baseline's ratio to itself says nothing
            figures[f"{prefix}/{field}"] = {"value": row.get(field), "better": better, "status": row["status"]}

    for row in result.get("train", []):
        if row["status"].startswith("skipped"):  # not run at this length by design
            continue
        prefix = f"train/{row['model']}/{row['length']}"
        add(prefix, row, {"tokens_per_s": "higher", "speedup_vs_baseline": "higher"})
        if row.get("speedup_vs_public") is not None:  # only where the public implementation ran
            add(prefix, row, {"speedup_vs_public": "higher"})
        add(prefix, {"model": row["model"]} | row["peak_memory"], {"peak_mib": "lower"})
    for row in result.get("generate", []):
        if row["status"].startswith(("not supported", "skipped")):
            continue
        add(f"generate/{row['model']}/{row['prompt_length']}", row, {
            "prefill_s": "lower", "decode_ms_per_token": "lower",
            "prefill_speedup_vs_baseline": "higher", "decode_speedup_vs_baseline": "higher",
        })
    return figures


def compare_results(old: dict, new: dict, tolerance: float) -> tuple[list[str], list[str]]:
    """Lines of a per-figure comparison, and the figures worse than `old` by more than `tolerance` (relative)."""
    old_figures, new_figures = old["figures"], new["figures"]
    lines = [f"{'figure':<52} {'old':>11} {'new':>11} {'change':>8}"]
    worse = []
    for key, before in old_figures.items():
        after = new_figures.get(key)
        if after is None:
            lines.append(f"{key:<52} {format_value(before['value']):>11} {'not run':>11}")
            continue
        if before["value"] is None or after["value"] is None:
            verdict = "WORSE" if before["value"] is not None else ""
            lines.append(f"{key:<52} {format_value(before['value'], before['status']):>11} "
                         f"{format_value(after['value'], after['status']):>11} {'':>8} {verdict}")
            if verdict:
                worse.append(key)
            continue
        change = after["value"] / before["value"] - 1
        got_worse = change < -tolerance if before["better"] == "higher" else change > tolerance
        lines.append(f"{key:<52} {format_value(before['value']):>11} {format_value(after['value']):>11} "
                     f"{change:>+8.1%} {'WORSE' if got_worse else ''}")
        if got_worse:
            worse.append(key)
    lines.append(f"matmul peak: {old['matmul_peak']['flops_per_s'] / 1e9:.0f} GFLOP/s then, "
                 f"{new['matmul_peak']['flops_per_s'] / 1e9:.0f} now (a slower machine moves every figure)")
    if worse:
        lines.append(f"{len(worse)} figure(s) worse by more than {tolerance:.0%}: {', '.join(worse)}")
    else:
        lines.append(f"no figure worse by more than {tolerance:.0%}")
    return lines, worse
