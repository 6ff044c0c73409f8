"""A study plan: which shipped configs to train, with which shared settings, seeds and learning-rate sweep, how to
evaluate and time them, and which model plays which part in each claim of the report. Read from YAML
(ssmlm/configs/studies/*.yaml) into typed dataclasses; an unknown key or a value of the wrong type is a one-line error
naming the dotted key, as for training configs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..shipped import SHIPPED_STUDIES, shipped_plan_names
from ..training.config import SEED_RANGE, ConfigError, build_dataclass, parse_yaml


@dataclass
class ModelEntry:
    config: str  # a shipped config's name or a config file
    family: str  # its learning rate is the family's swept one
    headline: bool = False  # trained with every seed (the others with the first only)


@dataclass
class FamilySweep:
    config: str  # the family's representative config
    learning_rates: list[float]


@dataclass
class SweepPlan:
    settings: list[str] = field(default_factory=list)  # on top of the study's settings: a shorter run
    families: dict[str, FamilySweep] = field(default_factory=dict)


@dataclass
class EvaluationPlan:
    multipliers: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    max_documents: int | None = None
    bucket_size: int = 256
    within_context: int = 32  # the truncated context of the check at the training length
    within_max_documents: int | None = None


@dataclass
class TimingPlan:
    repeats: int = 3
    prompt_multipliers: list[int] = field(default_factory=lambda: [1, 16])
    new_tokens: int = 32


@dataclass
class QuickPlan:
    settings: list[str] = field(default_factory=list)
    sweep_settings: list[str] = field(default_factory=list)
    evaluation: EvaluationPlan = field(default_factory=EvaluationPlan)
    timing: TimingPlan = field(default_factory=TimingPlan)


# The model of each claim role that a plan leaves out: the shipped plan's, the names the claim rules used before
# plans named them (a plan without a claims section loads as before, and a claim whose model it lacks is reported
# absent). A name the plan gives must be one of its models.
DEFAULT_CLAIM_MODELS = {"gss": "gss-dss", "dss": "ssm-dss", "gss_hybrid": "gss-hybrid", "mega_chunk": "mega-chunk",
                        "mega": "mega", "h3": "h3", "h3_hybrid": "h3-hybrid", "transformer": "transformer"}
DEFAULT_KERNELS = ["gss-dss", "gss-s4d", "gss-s4", "gss-dss-softmax", "gss-dlr", "gss-s5", "gss-liquid-s4",
                   "gss-sgconv"]


@dataclass
class ClaimsPlan:
    """Which of the plan's models plays which part in the report's claims (report.py judges them), and the
    thresholds of the claims' rules. A role left out (None) is played by DEFAULT_CLAIM_MODELS's model."""

    gss: str | None = None  # GSS: faster than `dss` at similar quality; no worse and better with more context
    dss: str | None = None  # a plain DSS layer
    gss_hybrid: str | None = None  # the GSS-Transformer hybrid: better than `gss`
    mega_chunk: str | None = None  # Mega-chunk: close to `mega`, full-attention Mega
    mega: str | None = None
    h3: str | None = None  # H3 alone: close to `transformer`
    h3_hybrid: str | None = None  # the H3 hybrid: better than `transformer`
    transformer: str | None = None
    kernels: list[str] | None = None  # GSS with each SSM kernel: each close to their median (None: DEFAULT_KERNELS)
    close_nats: float = 0.05  # "close": within this many nats per token (about 5% perplexity), or the seed noise
    min_speedup: float = 2.0  # "2-3x faster": at least this ratio of training tokens/s
    max_perplexity_increase: float = 0.02  # "no worse": at the longest length, at most this fraction above
    gain_standard_errors: float = 2.0  # "better with more context": a context gain above this many standard errors

    def model(self, role: str) -> str:
        return getattr(self, role) or DEFAULT_CLAIM_MODELS[role]

    def kernel_models(self) -> list[str]:
        return DEFAULT_KERNELS if self.kernels is None else self.kernels


@dataclass
class StudyPlan:
    models: dict[str, ModelEntry]
    settings: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: SweepPlan = field(default_factory=SweepPlan)
    evaluation: EvaluationPlan = field(default_factory=EvaluationPlan)
    timing: TimingPlan = field(default_factory=TimingPlan)
    claims: ClaimsPlan = field(default_factory=ClaimsPlan)
    quick: QuickPlan | None = None

    def __post_init__(self):
        """Every value the phases read, checked now: a wrong one found by a later phase would waste the earlier ones."""
        if not self.models:
            raise ConfigError("models: the plan names no model")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        for seed in self.seeds:
            if not 0 <= seed < SEED_RANGE:
                raise ConfigError(f"seeds: each must be in [0, 2**32), as training.seed, got {seed}")
        for name, entry in self.models.items():
            if entry.family not in self.sweep.families and self.sweep.families:
                raise ConfigError(f"models.{name}.family: {entry.family!r} is not swept; the sweep's families are "
                                  f"{', '.join(self.sweep.families)}")
        for family, sweep in self.sweep.families.items():
            key = f"sweep.families.{family}.learning_rates"
            if not sweep.learning_rates:
                raise ConfigError(f"{key}: give at least one learning rate")
            for rate in sweep.learning_rates:
                if not (math.isfinite(rate) and rate > 0):
                    raise ConfigError(f"{key}: each must be a positive number, got {rate}")
        check_evaluation_and_timing(self.evaluation, self.timing, "")
        check_claims(self.claims, self.models)
        if self.quick is not None:
            check_evaluation_and_timing(self.quick.evaluation, self.quick.timing, "quick.")

    def quick_version(self) -> StudyPlan:
        """The same models, seeds and sweep at the quick section's tiny size."""
        if self.quick is None:
            raise ConfigError("quick: the plan has no quick section, so --quick cannot run it")
        return StudyPlan(
            models=self.models, settings=self.settings + self.quick.settings, seeds=self.seeds,
            sweep=SweepPlan(self.sweep.settings + self.quick.sweep_settings, self.sweep.families),
            evaluation=self.quick.evaluation, timing=self.quick.timing, claims=self.claims,
        )

    def runs(self) -> list[tuple[str, int]]:
        """(model, seed) of every training run: headline models at every seed, the others at the first."""
        return [(name, seed) for seed_index, seed in enumerate(self.seeds) for name, entry in self.models.items()
                if seed_index == 0 or entry.headline]


def check_evaluation_and_timing(evaluation: EvaluationPlan, timing: TimingPlan, prefix: str) -> None:
    """The numbers of the evaluation and timing sections, each at least 1 (None: not set)."""
    counts = {"evaluation.multipliers": evaluation.multipliers, "evaluation.max_documents": [evaluation.max_documents],
              "evaluation.bucket_size": [evaluation.bucket_size],
              "evaluation.within_context": [evaluation.within_context],
              "evaluation.within_max_documents": [evaluation.within_max_documents], "timing.repeats": [timing.repeats],
              "timing.prompt_multipliers": timing.prompt_multipliers, "timing.new_tokens": [timing.new_tokens]}
    for key, values in counts.items():
        if not values:
            raise ConfigError(f"{prefix}{key}: give at least one")
        for value in values:
            if value is not None and value < 1:
                raise ConfigError(f"{prefix}{key}: must be at least 1, got {value}")


def check_claims(claims: ClaimsPlan, models: dict[str, ModelEntry]) -> None:
    """Every model a claim names is one of the plan's (a renamed model would leave its claim silently absent), and
    every threshold a number at least 0."""
    named = {f"claims.{role}": getattr(claims, role) for role in DEFAULT_CLAIM_MODELS}
    named |= {f"claims.kernels[{index}]": name for index, name in enumerate(claims.kernels or [])}
    for key, name in named.items():
        if name is not None and name not in models:
            raise ConfigError(f"{key}: {name!r} is not a model of the plan; its models are {', '.join(models)}")
    thresholds = {"close_nats": claims.close_nats, "min_speedup": claims.min_speedup,
                  "max_perplexity_increase": claims.max_perplexity_increase,
                  "gain_standard_errors": claims.gain_standard_errors}
    for key, value in thresholds.items():
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"claims.{key}: must be a number at least 0, got {value}")


def plan_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED_STUDIES / f"{path.stem}.yaml"
    if len(path.parts) == 1 and shipped.is_file():
        return shipped
    raise ConfigError(f"study plan not found: {name_or_path}; the shipped plans are "
                      f"{', '.join(shipped_plan_names())}")


def load_plan(name_or_path: str) -> StudyPlan:
    path = plan_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"cannot read the study plan {path}: {error.strerror or error}") from None
    values = parse_yaml(text, str(path))
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of plan sections")
    return build_dataclass(StudyPlan, values)
