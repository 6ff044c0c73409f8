"""A study plan: which shipped configs to train, with which shared settings, seeds and learning-rate sweep, and how
to evaluate and time them. Read from YAML (ssmlm/configs/studies/*.yaml) into typed dataclasses; an unknown key or
a value of the wrong type is a one-line error naming the dotted key, as for training configs."""

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


@dataclass
class StudyPlan:
    models: dict[str, ModelEntry]
    settings: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: SweepPlan = field(default_factory=SweepPlan)
    evaluation: EvaluationPlan = field(default_factory=EvaluationPlan)
    timing: TimingPlan = field(default_factory=TimingPlan)
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
        if self.quick is not None:
            check_evaluation_and_timing(self.quick.evaluation, self.quick.timing, "quick.")

    def quick_version(self) -> StudyPlan:
        """The same models, seeds and sweep at the quick section's tiny size."""
        if self.quick is None:
            raise ConfigError("quick: the plan has no quick section, so --quick cannot run it")
        return StudyPlan(
            models=self.models, settings=self.settings + self.quick.settings, seeds=self.seeds,
            sweep=SweepPlan(self.sweep.settings + self.quick.sweep_settings, self.sweep.families),
            evaluation=self.quick.evaluation, timing=self.quick.timing,
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
