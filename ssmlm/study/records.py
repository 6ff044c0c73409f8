"""The study's records in its output folder, what both the runner (which writes them) and the report (which reads
them) need: where a run's folder is, the record beside a finished run's model, and JSON read and written."""

from __future__ import annotations

import json
from pathlib import Path

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
