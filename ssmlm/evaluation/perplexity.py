"""Next-token loss at every position of a token window, in two regimes and with a truncated context, and
perplexity by position bucket.

A window is L + 1 token ids: the model reads the first L and is scored on the last L, so position t's loss is
-log p(ids[t + 1] | ids[0..t]) — the loss of the document's t-th token given everything before it.

    window     one forward of the whole window in convolutional mode (no cache): FFT convolutions, full or
               chunked attention over all L positions at once; memory grows with L (the losses are computed
               without the L × V logits, a chunk of positions at a time)
    streaming  the same tokens in chunks with the recurrent state carried from chunk to chunk; only the losses
               are kept, so memory is one chunk's activations plus the cache: independent of L for recurrent
               and chunked blocks (full attention still caches every key)
    truncated  the same tokens, each scored with at most C tokens before it (C: the training length): the
               baseline of the context gain, what the whole window adds over a training-length context

Window and streaming give the same losses up to float32 rounding; that is the invariant the tests and
`Agreement` check. Losses are summed in float64, so bucket sums add up to the total exactly.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import torch

from ..model.compat import CACHE_ARGUMENT
from ..tooling.memory import PeakMemory, release_freed_host_memory

LN2 = math.log(2)

AGREEMENT_RELATIVE_SUM_TOLERANCE = 1e-3
AGREEMENT_POSITION_TOLERANCE = 0.05
AGREEMENT_RULE = (
    f"the regimes agree when their summed losses differ by at most {AGREEMENT_RELATIVE_SUM_TOLERANCE:g} of the sum "
    f"and no position's loss differs by more than {AGREEMENT_POSITION_TOLERANCE:g} nats. In float32, FFT "
    "convolution and the recurrence round differently, which moves a position's loss by far less than that bound "
    "(each report gives the largest difference it saw); a real fault (a state lost or doubled at a chunk boundary, "
    "a position offset) moves the losses after it by tenths of a nat or more, which the per-position bound catches "
    "even where a long total would hide it."
)


def output_with_losses(model, inputs: torch.Tensor, targets: torch.Tensor, **options):
    """The model's output on `inputs` whose `loss` is the loss of each position predicting `targets` (same shape),
    computed without the logits (SSMLMForCausalLM's fused cross-entropy)."""
    return model(inputs, shift_labels=targets, return_logits=False, loss_per_position=True, **options)


@torch.no_grad()
def window_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """(L,) float64 losses of a window of L + 1 ids from one convolutional forward over all L inputs."""
    return output_with_losses(model, ids[None, :-1], ids[None, 1:], use_cache=False).loss[0].double().cpu()


@torch.no_grad()
def streaming_losses(model, ids: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, int]:
    """(L,) float64 losses of a window of L + 1 ids read in chunks of `chunk_size` with the cache carried, and the
    largest the cache grew (bytes). Nothing of a chunk but its losses outlives it."""
    inputs, targets = ids[:-1], ids[1:]
    losses = torch.empty(len(inputs), dtype=torch.float64)
    cache, cache_bytes = None, 0
    for start in range(0, len(inputs), chunk_size):
        end = start + chunk_size
        output = output_with_losses(model, inputs[None, start:end], targets[None, start:end], cache=cache, use_cache=True)
        cache = getattr(output, CACHE_ARGUMENT)
        losses[start:end].copy_(output.loss[0])
        cache_bytes = max(cache_bytes, cache.num_bytes())
        # The cache's small tensors live on between the chunks' large ones; without handing freed pages back, the
        # process grows with the stream though it uses no more.
        release_freed_host_memory()
    return losses, cache_bytes


@torch.no_grad()
def truncated_context_losses(model, ids: torch.Tensor, context: int, stride: int, batch_tokens: int) -> torch.Tensor:
    """(L,) float64 losses of a window of L + 1 ids, each position scored with at most `context` (C) tokens before
    it. Positions [0, C) are scored as in the window regime (one forward of the first C inputs). Then the model
    reads C-token pieces of the window ending every `stride` (S) positions, without a cache, and scores each
    piece's last S positions (the last piece: those not scored yet), so every position from C on is predicted
    from between C − S and C − 1 tokens before it. Pieces are read `batch_tokens // C` at a time (at least one)."""
    length = len(ids) - 1
    losses = torch.empty(length, dtype=torch.float64)
    first = min(context, length)
    losses[:first].copy_(window_losses(model, ids[:first + 1]))
    ends = [*range(first + stride, length, stride), length] if length > first else []
    scored, per_batch = first, max(1, batch_tokens // context)
    for batch_start in range(0, len(ends), per_batch):
        batch_ends = ends[batch_start:batch_start + per_batch]
        pieces = torch.stack([ids[end - context:end + 1] for end in batch_ends])  # (pieces, C + 1)
        piece_losses = output_with_losses(model, pieces[:, :-1], pieces[:, 1:], use_cache=False).loss  # (pieces, C)
        for row, end in zip(piece_losses, batch_ends):
            losses[scored:end].copy_(row[context - (end - scored):])  # piece position j is window position end-C+j
            scored = end
    return losses


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


class PassTotals:
    """One pass (a regime, or the truncated-context baseline) over the windows of one length: loss totals per
    position bucket, each window's summed loss per bucket and from position `context` on (the context gain and its
    uncertainty are computed from those), and the time, peak memory and cache size the windows took."""

    def __init__(self, length: int, bucket_size: int, context: int | None):
        self.length, self.bucket_size, self.context = length, bucket_size, context
        self.buckets = [LossTotals() for _ in range(0, length, bucket_size)]
        self.window_bucket_sums: list[list[float]] = []
        self.window_tail_sums: list[float] = []  # positions [context, L)
        self.seconds, self.peak_memory_bytes, self.cache_bytes = 0.0, None, 0

    def add(self, losses: torch.Tensor, token_bytes: torch.Tensor, peak: PeakMemory, cache_bytes: int = 0) -> None:
        window_buckets = bucket_totals(losses, token_bytes, self.bucket_size)
        for total, bucket in zip(self.buckets, window_buckets):
            total.add(bucket)
        self.window_bucket_sums.append([bucket.nll_sum for bucket in window_buckets])
        if self.context is not None:
            self.window_tail_sums.append(float(losses[self.context:].sum()))
        self.seconds += peak.seconds
        if peak.bytes is not None:
            self.peak_memory_bytes = max(self.peak_memory_bytes or 0, peak.bytes)
        self.cache_bytes = max(self.cache_bytes, cache_bytes)

    def summary(self) -> dict:
        overall = LossTotals()
        for bucket in self.buckets:
            overall.add(bucket)
        return {
            "status": "ok",
            **overall.summary(),
            "seconds": self.seconds,
            "tokens_per_second": overall.tokens / self.seconds,
            "peak_memory_bytes": self.peak_memory_bytes,
            "buckets": [{"start": start, "end": min(start + self.bucket_size, self.length), **bucket.summary()}
                        for start, bucket in zip(range(0, self.length, self.bucket_size), self.buckets)],
        }


def mean_and_standard_error(values: list[float]) -> tuple[float | None, float | None]:
    """The mean, and its standard error over the values (None from fewer than two)."""
    if not values:
        return None, None
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return statistics.fmean(values), error


def context_gain(truncated: PassTotals, full: PassTotals) -> dict:
    """What the whole window adds over a truncated context, in nats per token: the truncated pass's loss minus the
    full pass's, per window, averaged over the windows, with the standard error of that mean (windows are
    independent documents; positions within one are not). Overall over positions [C, L), where the contexts
    differ, and per position bucket. Positive: the model predicts better from the longer context."""
    tail_tokens = full.length - truncated.context
    per_window = [(cut - whole) / tail_tokens
                  for cut, whole in zip(truncated.window_tail_sums, full.window_tail_sums)] if tail_tokens else []
    nats, error = mean_and_standard_error(per_window)
    buckets = []
    for index, start in enumerate(range(0, full.length, full.bucket_size)):
        tokens = min(full.bucket_size, full.length - start)
        bucket_mean, bucket_error = mean_and_standard_error([
            (cut[index] - whole[index]) / tokens
            for cut, whole in zip(truncated.window_bucket_sums, full.window_bucket_sums)])
        buckets.append({"start": start, "end": start + tokens, "nats": bucket_mean, "standard_error": bucket_error})
    return {
        "context": truncated.context,
        "positions": [truncated.context, full.length],
        "nats": nats,
        "standard_error": error,
        "perplexity_ratio": math.exp(nats) if nats is not None else None,
        "per_window": per_window,
        "buckets": buckets,
    }


class Agreement:
    """The two regimes' losses at the same positions, compared window by window."""

    def __init__(self):
        self.max_difference, self.window_sum, self.streaming_sum = 0.0, 0.0, 0.0

    def add(self, window: torch.Tensor, streaming: torch.Tensor) -> None:
        self.max_difference = max(self.max_difference, float((window - streaming).abs().max()))
        self.window_sum += float(window.sum())
        self.streaming_sum += float(streaming.sum())

    def summary(self) -> dict:
        relative_sum_difference = abs(self.window_sum - self.streaming_sum) / max(abs(self.window_sum), 1e-12)
        agree = (relative_sum_difference <= AGREEMENT_RELATIVE_SUM_TOLERANCE
                 and self.max_difference <= AGREEMENT_POSITION_TOLERANCE)
        return {"verdict": "agree" if agree else "DISAGREE", "max_abs_position_difference": self.max_difference,
                "relative_sum_difference": relative_sum_difference}
