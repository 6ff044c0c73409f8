"""The study's report: results.json (every figure, gathered from the phases' outputs) and results.md (the tables and
one row per paper claim, each judged by a rule stated beside it, on the models and thresholds of the plan's claims
section)."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from ..tooling.markdown import markdown_table
from .plan import ClaimsPlan, StudyPlan
from .records import RUN_RECORD, model_and_seed, read_json, run_dir, write_json

# The headline quality of a model: its final validation loss at the training length (nats per token, the mean over
# the domains' validation blocks: train.py's own validation, the same blocks for every model).
QUALITY = "validation loss at the training length (nats/token, mean over the domains)"


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def seed_values(runs: dict, name: str, key) -> list[float]:
    return [value for record in runs.get(name, {}).values() if (value := key(record)) is not None]


def gather_lengths(evaluation: dict | None) -> dict:
    """model -> domain -> length -> the streaming regime's perplexity, context gain and buckets, per seed."""
    table = {}
    for model in (evaluation or {}).get("models", []):
        name, seed = model_and_seed(model["name"])
        for result in model["results"]:
            summary = result["regimes"].get("streaming") or {}
            window = result["regimes"].get("window") or {}
            if summary.get("status") != "ok":
                continue
            gain = summary.get("context_gain") or {}
            entry = table.setdefault(name, {}).setdefault(result["domain"], {}).setdefault(str(result["length"]), {})
            entry.setdefault("seeds", {})[seed] = {
                "perplexity": summary["perplexity"],
                "windows": result["evaluated"],
                "context_gain": gain.get("nats"),
                "context_gain_standard_error": gain.get("standard_error"),
                "buckets": [{"start": b["start"], "end": b["end"], "perplexity": b["perplexity"]}
                            for b in summary["buckets"]],
                "window_tokens_per_second": window.get("tokens_per_second"),
                "agreement": result.get("agreement", {}).get("verdict"),
            }
    for domains in table.values():
        for lengths in domains.values():
            for entry in lengths.values():
                seeds = entry["seeds"].values()
                entry["perplexity"] = mean([s["perplexity"] for s in seeds])
                gains = [s["context_gain"] for s in seeds if s["context_gain"] is not None]
                entry["context_gain"] = mean(gains)
    return table


def gather_within(within: dict | None) -> dict:
    """model -> domain -> the gain of the whole training-length window over a short context, per seed."""
    table = {}
    for model in (within or {}).get("models", []):
        name, seed = model_and_seed(model["name"])
        for result in model["results"]:
            gain = ((result["regimes"].get("streaming") or {}).get("context_gain")) or {}
            if gain.get("nats") is not None:
                table.setdefault(name, {}).setdefault(result["domain"], {})[seed] = {
                    "nats": gain["nats"], "standard_error": gain["standard_error"], "positions": gain["positions"]}
    return table


# ------------------------------------------------------------------------------------------------------------------
# The claims, each judged from the gathered figures by the rule in its row.


def speed_ratio(table: dict, short: str, long: str) -> float | None:
    """The window regime's evaluation tokens/s at length `long` over that at `short`, the mean over domains and
    seeds: about 1 for a cost linear in the length, falling for a quadratic one."""
    ratios = []
    for by_length in table.values():
        shorter, longer = by_length.get(short, {}).get("seeds", {}), by_length.get(long, {}).get("seeds", {})
        for seed, figures in longer.items():
            if seed in shorter and figures["window_tokens_per_second"] and shorter[seed]["window_tokens_per_second"]:
                ratios.append(figures["window_tokens_per_second"] / shorter[seed]["window_tokens_per_second"])
    return mean(ratios)


def compare(delta: float, noise: float) -> str:
    """The verdict on a difference of losses (negative: the claim's model is better)."""
    if delta < -noise:
        return "holds"
    if delta > noise:
        return "does not hold"
    return "within noise"


class Claims:
    def __init__(self, results: dict, plan: ClaimsPlan):
        self.results, self.plan, self.rows = results, plan, []
        self.quality = results["quality"]

    def model(self, role: str) -> str:
        return self.plan.model(role)

    def loss(self, name: str) -> float | None:
        return (self.quality.get(name) or {}).get("mean")

    def noise(self, *names: str) -> float:
        """The seed noise of a comparison: the larger seed spread of the models compared, or the study's largest
        where neither ran at several seeds."""
        spreads = [entry["spread"] for name in names if (entry := self.quality.get(name)) and len(entry["seeds"]) > 1]
        return max(spreads) if spreads else self.results["noise"]["nats"]

    def missing(self, *names: str) -> list[str]:
        return [name for name in names if self.loss(name) is None]

    def add(self, paper: str, claim: str, rule: str, measured: str, verdict: str) -> None:
        self.rows.append({"paper": paper, "claim": claim, "rule": rule, "measured": measured, "verdict": verdict})

    def absent(self, paper: str, claim: str, names: list[str]) -> None:
        self.add(paper, claim, "", f"not measured: {', '.join(names)} not in this study", "absent")

    def better(self, paper: str, claim: str, name: str, than: str) -> None:
        if missing := self.missing(name, than):
            return self.absent(paper, claim, missing)
        delta, noise = self.loss(name) - self.loss(than), self.noise(name, than)
        self.add(paper, claim, f"{name}'s loss below {than}'s by more than their seed noise ({noise:.3f})",
                 f"{name} {self.loss(name):.3f}, {than} {self.loss(than):.3f}: {delta:+.3f} nats",
                 compare(delta, noise))

    def close(self, paper: str, claim: str, name: str, to: str, extra: str = "") -> None:
        if missing := self.missing(name, to):
            return self.absent(paper, claim, missing)
        close_nats = self.plan.close_nats
        delta, bound = self.loss(name) - self.loss(to), max(self.noise(name, to), close_nats)
        verdict = "holds" if delta <= bound else "does not hold"
        self.add(paper, claim, f"{name}'s loss at most {bound:.3f} nats above {to}'s (the larger of {close_nats:g} "
                               f"and their seed noise)",
                 f"{name} {self.loss(name):.3f}, {to} {self.loss(to):.3f}: {delta:+.3f} nats{extra}", verdict)

    def longest_length(self) -> str:
        """The longest evaluation length, as the gathered figures key it."""
        return str(self.results["train_length"] * max(self.results["plan"]["evaluation"]["multipliers"]))


def judge_gss_speed(claims: Claims) -> None:
    """GSS against a plain DSS layer: speed at similar quality."""
    claim = "GSS trains 2-3x faster than a plain DSS layer at similar quality"
    gss, dss = claims.model("gss"), claims.model("dss")
    if missing := claims.missing(gss, dss):
        return claims.absent("GSS", claim, missing)
    timing = (claims.results.get("timing") or {}).get("models", {})
    close_nats, min_speedup = claims.plan.close_nats, claims.plan.min_speedup
    speeds = [timing.get(name, {}).get("train_tokens_per_second") for name in (gss, dss)]
    ratio = speeds[0] / speeds[1] if all(speeds) else None
    delta, bound = claims.loss(gss) - claims.loss(dss), max(claims.noise(gss, dss), close_nats)
    fast = ratio is not None and ratio >= min_speedup
    similar = delta <= bound
    verdict = ("absent: not timed" if ratio is None else "holds" if fast and similar else
               f"partly: similar quality, not {min_speedup:g}x faster" if similar else
               "partly: faster, not similar quality" if fast else "does not hold")
    claims.add("GSS", claim, f"training tokens/s ratio >= {min_speedup:g} and loss at most {bound:.3f} nats above "
                             f"(the larger of {close_nats:g} and their seed noise)",
               f"{ratio:.2f}x the tokens/s; loss {delta:+.3f} nats" if ratio else f"loss {delta:+.3f} nats", verdict)


def judge_gss_length(claims: Claims) -> None:
    """GSS beyond its training length: no worse."""
    train_length, longest = claims.results["train_length"], claims.longest_length()
    claim = f"GSS trained at {train_length} tokens does not get worse on longer contexts"
    gss = claims.results["lengths"].get(claims.model("gss"), {})
    if not gss:
        return claims.absent("GSS", claim, [f"{claims.model('gss')}'s evaluation"])
    increase = claims.plan.max_perplexity_increase
    pairs = {domain: (by_length.get(str(train_length), {}).get("perplexity"),
                      by_length.get(longest, {}).get("perplexity")) for domain, by_length in gss.items()}
    pairs = {domain: pair for domain, pair in pairs.items() if None not in pair}
    worse = [domain for domain, (short, long) in pairs.items() if long > short * (1 + increase)]
    claims.add("GSS", claim,
               f"perplexity at {longest} tokens at most {increase * 100:g}% above that at {train_length}, every domain",
               "; ".join(f"{d} {s:.1f} -> {lg:.1f}" for d, (s, lg) in pairs.items()),
               "does not hold" if worse else "holds" if pairs else "absent")


def judge_gss_context_use(claims: Claims) -> None:
    """GSS beyond its training length: better with more context, by its context gain."""
    train_length, longest = claims.results["train_length"], claims.longest_length()
    claim = "GSS keeps improving as the context grows: it uses context beyond its training length"
    gss = claims.results["lengths"].get(claims.model("gss"), {})
    if not gss:
        return claims.absent("GSS", claim, [f"{claims.model('gss')}'s evaluation"])
    errors = claims.plan.gain_standard_errors
    parts, verdicts = [], []
    for domain, by_length in gss.items():
        seeds = (by_length.get(longest) or {}).get("seeds", {})
        for seed, figures in seeds.items():
            gain, error = figures["context_gain"], figures["context_gain_standard_error"]
            if gain is None or error is None or figures["windows"] < 2:  # no spread to judge by
                continue
            parts.append(f"{domain} seed {seed}: {gain:+.4f} ± {error:.4f}")
            verdicts.append("holds" if gain > errors * error else "does not hold" if gain < -errors * error
                            else "zero")
    verdict = ("holds" if verdicts and all(v == "holds" for v in verdicts) else
               "does not hold" if verdicts else "absent: fewer than 2 windows at the longest length")
    claims.add("GSS", claim, f"context gain at {longest} tokens (nats/token over a {train_length}-token context) "
                             f"above {errors:g} standard errors in every domain and seed",
               "; ".join(parts), verdict)


def judge_mega(claims: Claims) -> None:
    """Mega-chunk against full Mega: quality, with the evaluation's speed at length beside it."""
    train_length, lengths = claims.results["train_length"], claims.results["lengths"]
    mega_chunk, mega = claims.model("mega_chunk"), claims.model("mega")
    extra = ""
    chunk, full = lengths.get(mega_chunk, {}), lengths.get(mega, {})
    common = set()
    if chunk and full:  # the lengths both ran in every domain
        common = set.intersection(*(set(by_length) for table in (chunk, full) for by_length in table.values()))
    if common:
        both = str(max(map(int, common)))  # full Mega's simple position bias stops at its max_positions option
        chunk_ratio, full_ratio = (speed_ratio(table, str(train_length), both) for table in (chunk, full))
        if chunk_ratio and full_ratio:
            extra = (f"; evaluation tokens/s at {both} over that at {train_length}: Mega-chunk {chunk_ratio:.2f}, "
                     f"Mega {full_ratio:.2f}")
    claims.close("Mega", "Mega-chunk's quality is close to full-attention Mega's, at linear cost", mega_chunk, mega,
                 extra)


def judge_kernels(claims: Claims) -> None:
    """The SSM kernels as GSS's mixer: each close to the kernels' median."""
    close_nats = claims.plan.close_nats
    kernels = {name: claims.loss(name) for name in claims.plan.kernel_models() if claims.loss(name) is not None}
    claim = "S4, S4D, DSS, DSS-softmax, S5, DLR, SGConv and Liquid-S4 are of comparable quality as LM mixers"
    if len(kernels) < 2:
        return claims.absent("S4 family", claim, ["the GSS kernel runs"])
    centre, bound = statistics.median(kernels.values()), max(claims.noise(*kernels), close_nats)
    outside = {name: loss - centre for name, loss in kernels.items() if abs(loss - centre) > bound}
    claims.add("S4 family", claim,
               f"every kernel's loss (in GSS) within {bound:.3f} nats of the kernels' median (the larger of "
               f"{close_nats:g} and the seed noise of those run at several seeds)",
               f"median {centre:.3f}; range {min(kernels.values()):.3f}-{max(kernels.values()):.3f}"
               + (f"; outside: {', '.join(f'{n} {d:+.3f}' for n, d in outside.items())}" if outside else ""),
               "does not hold" if outside else "holds")


def judge_claims(results: dict, plan: ClaimsPlan) -> list[dict]:
    """One row per paper claim, with the models `plan` casts in each."""
    claims = Claims(results, plan)
    judge_gss_speed(claims)
    judge_gss_length(claims)
    judge_gss_context_use(claims)
    claims.better("GSS", "The GSS-Transformer hybrid is better than GSS alone", claims.model("gss_hybrid"),
                  claims.model("gss"))
    judge_mega(claims)
    claims.close("H3", "H3 alone comes close to a Transformer", claims.model("h3"), claims.model("transformer"))
    claims.better("H3", "The H3 hybrid (H3 + 2 attention layers) beats the Transformer", claims.model("h3_hybrid"),
                  claims.model("transformer"))
    judge_kernels(claims)
    return claims.rows


# ------------------------------------------------------------------------------------------------------------------
# Gathering and writing.


def gather(plan: StudyPlan, out: Path, train_length: int, domains: list[str], corpus: Path | None,
           extra_settings: list[str]) -> dict:
    """Every figure of the study in OUT, with the claims judged: results.json."""
    runs = {}
    for name, seed in plan.runs():
        record = read_json(run_dir(out, name, seed) / RUN_RECORD)
        if record is not None:
            runs.setdefault(name, {})[str(seed)] = record
    quality = {}
    for name in runs:
        losses = seed_values(runs, name, lambda record: record["validation"].get("loss"))
        quality[name] = {"mean": mean(losses), "seeds": losses, "spread": max(losses) - min(losses) if losses else None,
                         "domains": {domain: mean(seed_values(runs, name, lambda r, d=domain: r["validation"].get(
                             f"{d}/loss"))) for domain in domains}}
    spreads = [entry["spread"] for entry in quality.values() if len(entry["seeds"]) > 1]
    sweep = read_json(out / "sweep.json")
    results = {
        "plan": {key: value for key, value in dataclasses.asdict(plan).items() if key != "quick"},
        "train_length": train_length,
        "corpus": str(corpus) if corpus else "the configs' own data",
        "extra_settings": extra_settings,
        "durations_seconds": read_json(out / "durations.json") or {},
        "sweep": sweep,
        "runs": runs,
        "quality_metric": QUALITY,
        "quality": quality,
        "noise": {"nats": max(spreads) if spreads else 0.0,
                  "rule": "a model's seed spread is the difference between its seeds' losses; a difference of two "
                          "models' losses counts only if it is larger than the larger spread of the two (the largest "
                          "spread of the study, given here, where neither ran at several seeds)"},
        "lengths": gather_lengths(read_json(out / "evaluation" / "results.json")),
        "within": gather_within(read_json(out / "within" / "results.json")),
        "timing": read_json(out / "timing.json"),
    }
    results["claims"] = judge_claims(results, plan.claims)
    return results


def fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"


def render(results: dict) -> str:
    """results.md: the claims first, then the tables they are judged from."""
    quality, lengths = results["quality"], results["lengths"]
    domains = list(next(iter(quality.values()))["domains"]) if quality else []
    all_lengths = sorted({int(length) for model in lengths.values() for d in model.values() for length in d})
    lines = ["# Study results", "",
             "Written by `ssmlm-study` from the phases' outputs beside this file. "
             f"Quality: {results['quality_metric']}. "
             f"Seed noise: {results['noise']['rule']}; the largest: {results['noise']['nats']:.4f} nats.", ""]
    lines += ["## The papers' claims", ""]
    lines += markdown_table(["paper", "claim", "rule", "measured", "verdict"],
                            [[row["paper"], row["claim"], row["rule"], row["measured"], f"**{row['verdict']}**"]
                             for row in results["claims"]])
    if results["sweep"]:
        lines += learning_rates_section(results["sweep"])
    lines += models_section(results, domains)
    lines += perplexity_by_length_section(lengths, domains, all_lengths)
    lines += context_gain_section(lengths, domains, all_lengths, results["train_length"])
    if all_lengths:
        lines += perplexity_by_position_section(lengths, domains, str(all_lengths[-1]))
    if results["within"]:
        lines += within_section(results, domains)
    durations = results["durations_seconds"]
    lines += ["## Time", "", ", ".join(f"{phase} {seconds / 60:.1f} min" for phase, seconds in durations.items())
              + f"; in all {sum(durations.values()) / 60:.1f} min.", ""]
    return "\n".join(lines)


def learning_rates_section(sweep: dict) -> list[str]:
    lines = ["## Learning rates", ""]
    rates = sorted({run["learning_rate"] for family in sweep.values() for run in family["runs"]})
    rows = []
    for family, family_sweep in sweep.items():
        by_rate = {run["learning_rate"]: run for run in family_sweep["runs"]}
        rows.append([family, family_sweep["config"], *[
            fmt(by_rate[rate]["validation"].get("loss"), 4) if rate in by_rate and by_rate[rate]["status"] == "ok"
            else (by_rate[rate]["status"].split(":")[0] if rate in by_rate else "") for rate in rates],
            f"{family_sweep['best']:g}"])
    return lines + markdown_table(["family", "config", *[f"lr {rate:g}" for rate in rates], "chosen"], rows)


def models_section(results: dict, domains: list[str]) -> list[str]:
    lines = ["## Models", ""]
    timing = (results["timing"] or {}).get("models", {})
    prompts = sorted({int(p) for model in timing.values() for p in model["decoding"]})
    rows = []
    for name, entry in results["quality"].items():
        seeds = results["runs"][name]
        first = next(iter(seeds.values()))
        model_timing = timing.get(name, {})
        rows.append([name, results["plan"]["models"][name]["config"], fmt(first["parameters"], 0),
                     f"{first['learning_rate']:g}", " / ".join(fmt(value, 4) for value in entry["seeds"]),
                     fmt(entry["spread"], 4) if len(entry["seeds"]) > 1 else "",
                     *[fmt(value, 3) for value in entry["domains"].values()],
                     fmt(model_timing.get("train_tokens_per_second"), 0),
                     *[fmt(model_timing.get("decoding", {}).get(str(p), {}).get("ms_per_token"), 2) for p in prompts],
                     fmt(mean([r["seconds"] for r in seeds.values()]) / 60, 1)])
    return lines + markdown_table(["model", "config", "parameters", "lr", "val loss per seed", "seed spread",
                                   *[f"{d} loss" for d in domains], "train tok/s",
                                   *[f"decode ms/token after {p}" for p in prompts], "train min/run"], rows)


def perplexity_by_length_section(lengths: dict, domains: list[str], all_lengths: list[int]) -> list[str]:
    lines = ["## Perplexity by evaluation length (test split, streaming regime, mean over seeds)", ""]
    for domain in domains:
        rows = [[name, *[fmt(model.get(domain, {}).get(str(length), {}).get("perplexity")) for length in all_lengths]]
                for name, model in lengths.items()]
        lines += [f"### {domain}", ""] + markdown_table(["model", *map(str, all_lengths)], rows)
    return lines


def context_gain_section(lengths: dict, domains: list[str], all_lengths: list[int], train_length: int) -> list[str]:
    lines = [f"## Context gain over a {train_length}-token context (nats/token, positions {train_length} to L; "
             "mean over seeds)", ""]
    for domain in domains:
        rows = [[name, *[fmt(model.get(domain, {}).get(str(length), {}).get("context_gain"), 4, signed=True)
                         for length in all_lengths[1:]]] for name, model in lengths.items()]
        lines += [f"### {domain}", ""] + markdown_table(["model", *map(str, all_lengths[1:])], rows)
    return lines


def perplexity_by_position_section(lengths: dict, domains: list[str], longest: str) -> list[str]:
    lines = [f"## Perplexity by position in {longest}-token windows (first seed, streaming)", ""]
    for domain in domains:
        rows, header = [], None
        for name, model in lengths.items():
            seeds = model.get(domain, {}).get(longest, {}).get("seeds", {})
            if not seeds:
                continue
            buckets = next(iter(seeds.values()))["buckets"]
            header = header or [f"{b['start']}-{b['end']}" for b in buckets]
            rows.append([name, *[fmt(b["perplexity"]) for b in buckets]])
        if header:
            lines += [f"### {domain}", ""] + markdown_table(["model", *header], rows)
    return lines


def within_section(results: dict, domains: list[str]) -> list[str]:
    within, train_length = results["within"], results["train_length"]
    context = results["plan"]["evaluation"]["within_context"]
    lines = [f"## Does a model use its {train_length}-token training context? Gain over a {context}-token "
             "context, at the training length (nats/token, ± standard error)", ""]
    rows = [[f"{name} seed {seed}", *[
        f"{model[d][seed]['nats']:+.4f} ± {model[d][seed]['standard_error']:.4f}" if seed in model.get(d, {})
        else "-" for d in domains]] for name, model in within.items() for seed in sorted(
            {s for d in model.values() for s in d})]
    return lines + markdown_table(["model", *domains], rows)


def write_report(results: dict, out: Path) -> None:
    write_json(out / "results.json", results)
    (out / "results.md").write_text(render(results), encoding="utf-8")
