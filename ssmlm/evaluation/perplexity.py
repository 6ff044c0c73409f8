"""Next-token loss at every position of a token window, in two regimes, and perplexity by position bucket.

A window is L + 1 token ids: the model reads the first L and is scored on the last L, so position t's loss is
-log p(ids[t + 1] | ids[0..t]) — the loss of the document's t-th token given everything before it.

    window     one forward of the whole window in convolutional mode (no cache): FFT convolutions, full or
               chunked attention over all L positions at once; memory grows with L (the logits alone are L × V)
    streaming  the same tokens in chunks with the recurrent state carried from chunk to chunk; only the losses
               are kept, so memory is one chunk's activations plus the cache: independent of L for recurrent
               and chunked blocks (full attention still caches every key)

Both give the same losses up to float32 rounding; that is the invariant the tests and `agreement` check.
Losses are summed in float64, so bucket sums add up to the total exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

LN2 = math.log(2)
PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

AGREEMENT_RELATIVE_SUM_TOLERANCE = 1e-3
AGREEMENT_POSITION_TOLERANCE = 0.05
AGREEMENT_RULE = (
    f"the regimes agree when their summed losses differ by at most {AGREEMENT_RELATIVE_SUM_TOLERANCE:g} of the sum "
    f"and no position's loss differs by more than {AGREEMENT_POSITION_TOLERANCE:g} nats. In float32, FFT "
    "convolution and the recurrence round differently (about 1e-4 of the largest activation at 16k tokens), which "
    "moved a position's loss by at most 4e-5 nats in small models at 16k tokens, and a total by far less than the "
    "sum bound; a real fault (a state "
    "lost or doubled at a chunk boundary, a position offset) moves the losses after it by tenths of a nat or more, "
    "which the per-position bound catches even where a long total would hide it."
)


@torch.no_grad()
def window_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """(L,) float64 losses of a window of L + 1 ids from one convolutional forward over all L inputs."""
    logits = model(ids[None, :-1], use_cache=False).logits[0]
    return F.cross_entropy(logits, ids[1:], reduction="none").double().cpu()


@torch.no_grad()
def streaming_losses(model, ids: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, int]:
    """(L,) float64 losses of a window of L + 1 ids read in chunks of `chunk_size` with the cache carried, and the
    largest the cache grew (bytes). Only one chunk's logits exist at a time."""
    inputs, targets = ids[:-1], ids[1:]
    cache, pieces, cache_bytes = None, [], 0
    for start in range(0, len(inputs), chunk_size):
        output = model(inputs[None, start:start + chunk_size], past_key_values=cache, use_cache=True)
        cache = output.past_key_values
        pieces.append(F.cross_entropy(output.logits[0], targets[start:start + chunk_size], reduction="none")
                      .double().cpu())
        del output  # free this chunk's logits before the next chunk's are made
        cache_bytes = max(cache_bytes, cache.num_bytes())
    return torch.cat(pieces), cache_bytes


@dataclass
class LossTotals:
    """Summed loss (nats), scored tokens and the UTF-8 bytes of their text, over any set of positions."""

    nll_sum: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, other: LossTotals) -> None:
        self.nll_sum += other.nll_sum
        self.tokens += other.tokens
        self.bytes += other.bytes

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        """Comparable across tokenizers: the same text costs the same bytes whatever it is cut into."""
        return self.nll_sum / LN2 / self.bytes if self.bytes else math.nan

    def summary(self) -> dict:
        return {**asdict(self), "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


def bucket_totals(losses: torch.Tensor, token_bytes: torch.Tensor, bucket_size: int) -> list[LossTotals]:
    """Totals of positions [0, b), [b, 2b), ... of one window (the last bucket may be shorter)."""
    return [
        LossTotals(float(losses[start:start + bucket_size].sum()), len(losses[start:start + bucket_size]),
                   int(token_bytes[start:start + bucket_size].sum()))
        for start in range(0, len(losses), bucket_size)
    ]


def agreement(window: torch.Tensor, streaming: torch.Tensor) -> dict:
    """Compare the two regimes' losses at the same positions (all windows of one length, concatenated)."""
    max_difference = float((window - streaming).abs().max())
    relative_sum_difference = float(abs(window.sum() - streaming.sum()) / window.sum().abs().clamp_min(1e-12))
    agree = (relative_sum_difference <= AGREEMENT_RELATIVE_SUM_TOLERANCE
             and max_difference <= AGREEMENT_POSITION_TOLERANCE)
    return {"verdict": "agree" if agree else "DISAGREE", "max_abs_position_difference": max_difference,
            "relative_sum_difference": relative_sum_difference}


class PeakMemory:
    """The most memory a block of code added over what was in use when it began: bytes allocated on a GPU; on a
    Linux CPU the resident-set high-water mark, reset through /proc/self/clear_refs; None where neither exists.

        with PeakMemory(device) as peak: ...
        peak.bytes, peak.seconds
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None
        self.seconds = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._baseline = resident_bytes("VmRSS") if reset_resident_peak() else None
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self._baseline is not None:
            self.bytes = resident_bytes("VmHWM") - self._baseline
        self.seconds = time.perf_counter() - self._start


def reset_resident_peak() -> bool:
    """Set this process's resident high-water mark (VmHWM) to its current size; False where Linux does not allow it."""
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def resident_bytes(field: str) -> int:
    """A size from /proc/self/status ("VmRSS" now, "VmHWM" the peak), in bytes."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"{PROC_STATUS} has no {field}")
