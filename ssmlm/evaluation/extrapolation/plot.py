"""perplexity.png, drawn from the results.json dict alone: the headline metric by position and by evaluation
length, and the context gain by position."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .report import METRIC_NAMES, best_regime, format_tokens, longest_with_numbers


def write_plot(results: dict, path: Path) -> None:
    """Per domain: the headline metric by position at each model's longest length, and by evaluation length."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    metric = results["metric"]["headline"]
    metric_name = METRIC_NAMES[metric]
    train_length = results["settings"]["train_length"]
    domains = list(results["data"])
    with_gain = bool(results["settings"]["baseline_context"])
    panels = 3 if with_gain else 2
    figure, axes = plt.subplots(len(domains), panels, figsize=(6.5 * panels, 4.5 * len(domains)), squeeze=False)
    for (by_position, by_length, *gain_axis), domain in zip(axes, domains):
        for model in results["models"]:
            points = [(result["length"], best[1][metric]) for result in model["results"]
                      if result["domain"] == domain and (best := best_regime(result))]
            if points:
                by_length.plot(*zip(*points), marker="o", label=model["name"])
            longest = longest_with_numbers(model, domain)
            if longest:
                result, regime, summary = longest
                centres = [(bucket["start"] + bucket["end"]) / 2 for bucket in summary["buckets"]]
                by_position.plot(centres, [bucket[metric] for bucket in summary["buckets"]], marker=".",
                                 label=f"{model['name']} (L={result['length']}, {regime})")
        for axis in (by_position, by_length):
            values = [value for line in axis.get_lines() for value in line.get_ydata()]
            if values and max(values) > 10 * min(values):
                axis.set_yscale("log")  # a model whose perplexity explodes would flatten every other line
            if train_length:
                axis.axvline(train_length, color="grey", linestyle="--", linewidth=1, label="training length")
            axis.set_ylabel(metric_name)
            axis.grid(alpha=0.3)
            if axis.has_data():
                axis.legend(fontsize="small")
        by_position.set(title=f"{domain}: {metric_name} by position in the context",
                        xlabel="position (tokens)")
        by_length.set(title=f"{domain}: {metric_name} by evaluation length", xlabel="evaluation length (tokens)")
        by_length.set_xscale("log", base=2)
        lengths = results["settings"]["lengths"]
        by_length.set_xticks(lengths, [format_tokens(length) for length in lengths])
        by_length.minorticks_off()
        if with_gain:
            plot_context_gain(gain_axis[0], results, domain)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_context_gain(axis, results: dict, domain: str) -> None:
    """Context gain by position at each model's longest length with numbers, both regimes, ± standard error."""
    for index, model in enumerate(results["models"]):  # colour C<index>: the model's colour in the other panels
        longest = longest_with_numbers(model, domain)
        if not longest:
            continue
        result = longest[0]
        for regime, style in (("streaming", "-"), ("window", "--")):
            summary = result["regimes"].get(regime)
            if not summary or summary["status"] != "ok" or "context_gain" not in summary:
                continue
            buckets = [bucket for bucket in summary["context_gain"]["buckets"] if bucket["nats"] is not None]
            centres = [(bucket["start"] + bucket["end"]) / 2 for bucket in buckets]
            gains = np.array([bucket["nats"] for bucket in buckets])
            errors = np.array([bucket["standard_error"] or 0.0 for bucket in buckets])
            axis.plot(centres, gains, style, color=f"C{index}", marker=".",
                      label=f"{model['name']} (L={result['length']}, {regime})")
            axis.fill_between(centres, gains - errors, gains + errors, color=f"C{index}", alpha=0.12)
    context = results["settings"]["baseline_context"]
    axis.axhline(0, color="black", linewidth=0.8)
    axis.axvline(context, color="grey", linestyle="--", linewidth=1, label=f"truncated context ({context})")
    axis.set(title=f"{domain}: context gain by position (± standard error)", xlabel="position (tokens)",
             ylabel="nats per token: truncated − whole window")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
