"""The study's records in its output folder, what both the runner (which writes them) and the report (which reads
them) need: where a run's folder is, the record beside a finished run's model, and JSON read and written."""

from __future__ import annotations

import json
from pathlib import Path

from ..training import ConfigError

RUN_RECORD = "study-run.json"  # written beside a finished run's model: what the report needs of it
SEED_SUFFIX = "-seed"  # a run's folder, and its name in the evaluation: MODEL-seedSEED


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / f"{name}{SEED_SUFFIX}{seed}"


def model_and_seed(run_name: str) -> tuple[str, str]:
    model, _, seed = run_name.rpartition(SEED_SUFFIX)
    return model, seed


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def claim_runs_folder(runs: Path, stamp: dict, name: str) -> None:
    """The runs folder holds runs of these settings (`stamp`, kept in RUNS/name) or none: a run done before is only
    reused when it was made as this study would make it. Other settings are a ConfigError naming what differs."""
    path, stamp = runs / name, json.loads(json.dumps(stamp))  # as it reads back: tuples as lists
    if (before := read_json(path)) is None:
        write_json(path, stamp)
    elif before != stamp:
        before, now = flat_keys(before), flat_keys(stamp)
        changed = sorted(key for key in {**before, **now} if before.get(key) != now.get(key))
        raise ConfigError(f"{runs} holds runs of other settings ({', '.join(changed)} differ); pass another "
                          f"--runs, or remove that folder")


def flat_keys(values: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} as {"a.b": 1}."""
    flat = {}
    for key, value in values.items():
        flat.update(flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat
