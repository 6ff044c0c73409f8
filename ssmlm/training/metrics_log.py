"""What a run reports as it trains: metrics.jsonl (one JSON record per logged step and per validation pass), the
tracker (TensorBoard by default, under logs/) and the progress bar.

The training loop (trainer.py) counts each step here; every output.log_every steps the mean loss over the steps
since the last record, the speed, the learning rates and the gradient norm are recorded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from accelerate import Accelerator

from .config import TrainConfig, flat_values


def json_safe(value):
    """JSON has no NaN or infinity: such a number is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """metrics.jsonl on the main process; after a resume, records past the resumed step are dropped first, and so
    is a line a crash left half-written."""

    def __init__(self, path: Path, enabled: bool, start_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= start_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue
            partial = path.with_name(path.name + ".tmp")
            partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(partial, path)  # a crash now leaves the old file or the new one, never half of one

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({key: json_safe(value) for key, value in record.items()}) + "\n")


def flat_hyperparameters(config: TrainConfig) -> dict:
    """The config as flat scalars, as trackers (TensorBoard hparams) want."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in flat_values(config.to_dict()).items()}


class TrainingLog:
    """The metrics of steps and validation passes to the tracker and to metrics.jsonl, messages above the progress
    bar, and on the bar the loss and speed over the steps since the last record."""

    def __init__(self, accelerator: Accelerator, metrics_file: MetricsLog, progress, tokens_per_step: int):
        self.accelerator, self.metrics_file, self.progress = accelerator, metrics_file, progress
        self.tokens_per_step = tokens_per_step
        self.window_loss = torch.zeros((), device=accelerator.device)  # summed step losses since the last record
        self.window_steps, self.window_seconds = 0, 0.0

    def say(self, text: str) -> None:
        if self.accelerator.is_local_main_process:
            self.progress.write(text)

    def record(self, step: int, metrics: dict) -> None:
        self.accelerator.log(metrics, step=step)
        self.metrics_file.write({"step": step, **metrics})

    def diverged(self, step: int, step_loss: torch.Tensor, grad_norm) -> None:
        """The step whose loss or gradient norm is not finite, in metrics.jsonl."""
        self.metrics_file.write({"step": step, "diverged": True, "train/loss": float(step_loss),
                                 "train/grad_norm": float(grad_norm) if grad_norm is not None else None})

    def count_step(self, step_loss: torch.Tensor, seconds: float) -> None:
        """A finished step: its loss and its training time (not validation or saving)."""
        self.window_loss += step_loss
        self.window_steps += 1
        self.window_seconds += seconds
        # Until the next record, this process's running figures, so the bar says something from step 1.
        self.progress.set_postfix(loss=f"{float(self.window_loss) / self.window_steps:.3f}",
                                  tok_s=f"{self.window_steps * self.tokens_per_step / self.window_seconds:,.0f}",
                                  refresh=False)
        self.progress.update(1)

    def record_steps(self, step: int, optimizer, grad_norm) -> None:
        """The steps counted since the last record: their mean loss over every process, the speed, each parameter
        group's learning rate and the latest gradient norm."""
        mean_loss = self.accelerator.reduce(self.window_loss, "mean").item() / self.window_steps
        tokens_per_second = self.window_steps * self.tokens_per_step / self.window_seconds
        step_metrics = {"train/loss": mean_loss, "train/tokens_per_second": tokens_per_second,
                        **{f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups}}
        if grad_norm is not None:
            step_metrics["train/grad_norm"] = float(grad_norm)
        self.record(step, step_metrics)
        self.progress.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tokens_per_second:,.0f}")
        self.window_loss.zero_()
        self.window_steps, self.window_seconds = 0, 0.0
