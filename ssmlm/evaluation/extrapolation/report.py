"""results.md, drawn from the results.json dict alone, and the helpers the plot shares: which regime and length
have numbers, and how token counts are written."""

from __future__ import annotations

from ...tooling.markdown import markdown_table
from .. import MIN_STREAM_CHUNKS
from .passes import BASELINE

METRIC_NAMES = {"perplexity": "perplexity", "bits_per_byte": "bits per byte"}


def best_regime(result: dict) -> tuple[str, dict] | None:
    """The streaming numbers where they exist (they reach the longest lengths), else the window's; the two agree
    wherever both ran."""
    for regime in ("streaming", "window"):
        summary = result["regimes"].get(regime)
        if summary and summary["status"] == "ok":
            return regime, summary
    return None


def longest_with_numbers(model: dict, domain: str) -> tuple[dict, str, dict] | None:
    """(result, regime, summary) at the longest length where `model` has numbers for `domain`."""
    found = None
    for result in model["results"]:
        best = best_regime(result) if result["domain"] == domain else None
        if best and (found is None or result["length"] > found[0]["length"]):
            found = (result, *best)
    return found


def format_tokens(count: int) -> str:
    return f"{count // 1024}k" if count and count % 1024 == 0 else str(count)


def length_label(length: int, train_length: int | None) -> str:
    return f"{length} ({length / train_length:g}×)" if train_length else str(length)


class StatusNotes:
    """Table cells: a number, or a short status that points to the full message, each message numbered once."""

    def __init__(self, metric: str):
        self.metric = metric
        self.numbers: dict[str, int] = {}

    def cell(self, summary: dict | None) -> str:
        """A regime's or a bucket's number, or what stopped the regime."""
        if summary is None:
            return "–"
        if summary.get("status", "ok") == "ok":
            return f"{summary[self.metric]:.4g}"
        number = self.numbers.setdefault(summary["status"], len(self.numbers) + 1)
        return f"{summary['status'].split(':')[0]} [{number}]"

    def lines(self) -> list[str]:
        if not self.numbers:
            return []
        return ["## Notes", "", *(f"[{number}] {message}  " for message, number in self.numbers.items()), ""]


def render_markdown(results: dict) -> str:
    settings, metric = results["settings"], results["metric"]["headline"]
    notes = StatusNotes(metric)
    length_columns = [length_label(length, settings["train_length"]) for length in settings["lengths"]]
    lines = [
        "# Length extrapolation",
        "",
        f"Windows: {settings['windows']}.",
        f"Lengths: {', '.join(length_columns)}. Position buckets of {settings['bucket_size']} tokens; streaming in "
        f"chunks of at most {settings['stream_chunk']} tokens and at least {MIN_STREAM_CHUNKS} per window; "
        f"{settings['dtype']} on {settings['device']}.",
        f"Tables show **{METRIC_NAMES[metric]}**: {results['metric']['why']}. results.json holds both perplexity and "
        "bits per byte, per bucket and per regime, with times and memory.",
        "",
    ]
    if settings["baseline_context"]:
        context, stride = settings["baseline_context"], settings["baseline_stride"]
        lines += [f"**Context gain**: {results['context_gain']} (here C = {context}: positions from {context} on "
                  f"predicted from {context - stride} to {context - 1} tokens).", ""]
    lines += markdown_table(["model", "blocks", "parameters", "tokenizer"], [
        [model["name"], " ".join(model["block_types"]), f"{model['parameters']:,}", model["tokenizer"]]
        for model in results["models"]
    ])
    for domain in results["data"]:
        lines += domain_section(results, domain, length_columns, notes)

    lines += ["## Memory and time", "",
              "Peak memory each pass added while scoring one window (the largest over windows and domains; on a "
              "CPU the resident-set high-water mark, on a GPU allocated memory), streaming's cache size, and tokens "
              f"per second. `{BASELINE}` is the truncated-context pass of the context gain.", ""]
    lines += markdown_table(["model", "pass", *length_columns], [
        [model["name"], name, *(memory_cell(model, length, name) for length in settings["lengths"])]
        for model in results["models"]
        for name in [*settings["regimes"], *([BASELINE] if settings["baseline_context"] else [])]
    ])

    summary = agreement_summary(results)
    lines += ["## Window vs. streaming", "", summary[0].upper() + summary[1:] + ".",
              f"Rule: {results['agreement_rule']}", ""]
    agreements = [
        [model["name"], result["domain"], str(result["length"]),
         f"{result['agreement']['max_abs_position_difference']:.2e}",
         f"{result['agreement']['relative_sum_difference']:.2e}", f"**{result['agreement']['verdict']}**"]
        for model in results["models"] for result in model["results"] if "agreement" in result
    ]
    if agreements:
        lines += markdown_table(["model", "domain", "length", "largest loss difference at a position (nats)",
                        "relative difference of the summed loss", "verdict"], agreements)
    return "\n".join(lines + notes.lines())


def domain_section(results: dict, domain: str, length_columns: list[str], notes: StatusNotes) -> list[str]:
    """One domain's tables: the metric and the context gain by evaluation length, the windows scored, and the
    metric and the context gain by position."""
    settings, data = results["settings"], results["data"][domain]
    metric_name = METRIC_NAMES[results["metric"]["headline"]].capitalize()
    by_length, gain_by_length, scored = [], [], []
    for model in results["models"]:
        results_at = {result["length"]: result for result in model["results"] if result["domain"] == domain}
        for regime in settings["regimes"]:
            summaries = [results_at[length]["regimes"].get(regime) for length in settings["lengths"]]
            by_length.append([model["name"], regime, *map(notes.cell, summaries)])
            gain_by_length.append([model["name"], regime, *map(gain_cell, summaries)])
        scored.append([model["name"], *(f"{results_at[length]['evaluated']} of {results_at[length]['qualifying']}"
                                        for length in settings["lengths"])])
    lines = [f"## {domain} — `{data['source']}` ({data['documents']} documents)", "",
             f"**{metric_name} by evaluation length**", ""]
    lines += markdown_table(["model", "regime", *length_columns], by_length)
    if settings["baseline_context"]:
        lines += [f"**Context gain by evaluation length** (nats per token over positions {settings['baseline_context']}"
                  " to L, ± standard error over windows): the loss with a truncated context minus the loss with the "
                  "whole window; about zero where the model does not use the tokens beyond the truncated context", ""]
        lines += markdown_table(["model", "regime", *length_columns], gain_by_length)
    lines += ["**Windows scored** of those available (documents with at least L tokens, or windows of the "
              "concatenated stream)", ""]
    lines += markdown_table(["model", *length_columns], scored)

    longest = {model["name"]: longest_with_numbers(model, domain) for model in results["models"]}
    longest = {name: found for name, found in longest.items() if found}
    if not longest:
        return lines
    columns = [f"{name} (L={result['length']}, {regime})" for name, (result, regime, _) in longest.items()]
    buckets = {name: {bucket["start"]: bucket for bucket in summary["buckets"]}
               for name, (_, _, summary) in longest.items()}
    gains = {name: {bucket["start"]: bucket for bucket in summary.get("context_gain", {}).get("buckets", [])}
             for name, (_, _, summary) in longest.items()}
    metric_rows, gain_rows = [], []
    for start in sorted({start for by_start in buckets.values() for start in by_start}):
        end = max(by_start[start]["end"] for by_start in buckets.values() if start in by_start)
        positions = f"{format_tokens(start)}–{format_tokens(end)}"
        metric_rows.append([positions, *(notes.cell(buckets[name].get(start)) for name in longest)])
        gain_rows.append([positions, *(gain_text(gains[name].get(start)) for name in longest)])
    lines += [f"**{metric_name} by position in the context**, at each model's longest length with numbers", ""]
    lines += markdown_table(["positions", *columns], metric_rows)
    if settings["baseline_context"]:
        lines += ["**Context gain by position** (nats per token ± standard error), at the same lengths", ""]
        lines += markdown_table(["positions", *columns], gain_rows)
    return lines


def gain_text(gain: dict | None) -> str:
    """"+0.012 ± 0.004" nats (small values in exponent form); no error from a single window; "–" where there is
    nothing to compare."""
    if gain is None or gain["nats"] is None:
        return "–"
    error = gain["standard_error"]
    return f"{nats_text(gain['nats'], '+')}" + (f" ± {nats_text(error)}" if error is not None else " (1 window)")


def nats_text(value: float, sign: str = "") -> str:
    return f"{value:{sign}.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:{sign}.1e}"


def gain_cell(summary: dict | None) -> str:
    if summary is None or summary["status"] != "ok" or "context_gain" not in summary:
        return "–"
    return gain_text(summary["context_gain"])


def format_bytes(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def pass_summary(result: dict, name: str) -> dict:
    return result["baseline"] if name == BASELINE else result["regimes"][name]


def memory_cell(model: dict, length: int, name: str) -> str:
    summaries = [pass_summary(result, name) for result in model["results"]
                 if result["length"] == length and pass_summary(result, name)["status"] == "ok"]
    if not summaries:
        return "–"
    peak = max((summary["peak_memory_bytes"] for summary in summaries if summary["peak_memory_bytes"] is not None),
               default=None)
    speed = sum(summary["tokens"] for summary in summaries) / sum(summary["seconds"] for summary in summaries)
    cache = f", cache {format_bytes(max(summary['cache_bytes'] for summary in summaries))}" \
        if name == "streaming" else ""
    return f"{format_bytes(peak)}{cache}, {speed:,.0f} tok/s"


def agreement_summary(results: dict) -> str:
    verdicts = [(model["name"], result["domain"], result["length"], result["agreement"]["verdict"])
                for model in results["models"] for result in model["results"] if "agreement" in result]
    disagreeing = [f"{name} {domain} L={length}" for name, domain, length, verdict in verdicts if verdict != "agree"]
    if not verdicts:
        return "no length ran in both regimes, so their agreement was not checked"
    if disagreeing:
        return f"DISAGREE: the regimes differ at {len(disagreeing)} of {len(verdicts)} checks: {', '.join(disagreeing)}"
    return f"the regimes agree at all {len(verdicts)} (model, domain, length) where both ran"
