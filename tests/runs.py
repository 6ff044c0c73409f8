"""Helpers for tests that train: a tiny run's config on the tiny corpus, in-process and command-line runs, and reading
back what a run wrote."""

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import yaml
from accelerate.state import AcceleratorState, GradientState
from fixtures.tiny_corpus import DOMAINS

from ssmlm.training import train
from ssmlm.training.config import config_from_dict

REPO = Path(__file__).resolve().parent.parent
TRAIN_PY = REPO / "train.py"


def tiny_config_values(corpus: Path, cache_dir: Path, output_dir: Path) -> dict:
    return {
        "model": {"hidden_size": 32, "num_hidden_layers": 2},
        "data": {
            "sources": {domain: {"train": str(corpus / domain / "train.jsonl"),
                                 "validation": str(corpus / domain / "validation.jsonl")} for domain in DOMAINS},
            "seq_len": 64, "cache_dir": str(cache_dir), "num_proc": 2,
        },
        "tokenizer": {"kind": "byte_bpe", "vocab_size": 512},
        "training": {"max_steps": 50, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5, "eval_every": 25,
                     "eval_blocks": 32},
        "output": {"dir": str(output_dir), "save_every": 25, "log_every": 1, "tracker": None},
    }


def reset_accelerate() -> None:
    """Accelerate keeps process-wide state; the next run starts from scratch."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_in_process(values: dict, *overrides: str, **train_args) -> dict:
    try:
        return train(config_from_dict(values, list(overrides)), **train_args)
    finally:
        reset_accelerate()


def write_config(values: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def records(output_dir: Path) -> list[dict]:
    """metrics.jsonl, read as strict JSON (no bare NaN or Infinity)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(output_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in records(output_dir) if "train/loss" in r}


def validation(output_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(output_dir) if "val/loss" in r}


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(capsys, *args) -> tuple[int, str]:
    """train.py's main() in this process, as `python train.py ARGS` calls it: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = load_train_script().main([str(arg) for arg in args], prog="train.py")
    finally:
        reset_accelerate()
    return code, capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_rank_command(launcher_args: list[str], config: Path, *overrides: str) -> list[str]:
    """`accelerate launch` of train.py on 2 processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, "--num_processes", "2",
            "--main_process_port", str(free_port()), str(TRAIN_PY), "--config", str(config), *overrides]


def wait_for_logged_steps(output_dir: Path, steps: int, process, timeout: float = 120) -> None:
    """Until the running `process` has logged `steps` training losses in output_dir/metrics.jsonl."""
    metrics = output_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and sum('"train/loss"' in line for line in metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {steps} logged steps in {metrics} (exit code {process.poll()})")
