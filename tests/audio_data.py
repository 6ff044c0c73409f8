"""Small real-shaped audio for the tests: decaying tones with a little noise written as WAV folders, and the config
of a tiny SaShiMi trained on them by the audio-lm task."""

import math
from pathlib import Path

import torch

from ssmlm.data.speech import write_wav

SEQ_LEN = 400


def clip(samples: int, seed: int) -> torch.Tensor:
    """A decaying tone with a little noise: something with structure to learn."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * (200 + 50 * seed) * t) * torch.exp(-3 * t)
    return tone + 0.01 * torch.randn(samples, generator=generator, dtype=torch.float64)


def write_clips(folder: Path, lengths: list[int], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, samples in enumerate(lengths):
        write_wav(folder / f"clip{index}.wav", clip(samples, seed + index), 16000)
    return folder


def audio_config(tmp_path: Path, train, validation, test=None, **sections) -> dict:
    """A tiny SaShiMi on the audio-lm task (widths 8 -> 16 -> 32, one pair a level)."""
    source = {"train": str(train), "validation": str(validation), **({"test": str(test)} if test else {})}
    values = {
        "task": "audio-lm",
        "model": {"block_types": ["sashimi"], "num_hidden_layers": 1, "hidden_size": 8, "ssm_kernel": "s4",
                  "ssm_state_size": 4, "tie_word_embeddings": False,
                  "block_options": {"sashimi": {"pools": [2, 2], "expand": 2, "ff_expand": 2, "layers": 1}}},
        "data": {"sources": {"clips": source}, "seq_len": SEQ_LEN, "cache_dir": str(tmp_path / "cache")},
        "training": {"max_steps": 3, "batch_size": 2, "learning_rate": 3e-3, "warmup_steps": 1, "eval_every": 3,
                     "eval_blocks": 8},
        "output": {"dir": str(tmp_path / "run"), "save_every": 3, "log_every": 1, "tracker": None},
    }
    for section, settings in sections.items():
        values[section] = {**values.get(section, {}), **settings}
    return values
