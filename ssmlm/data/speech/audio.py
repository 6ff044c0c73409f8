"""Audio primitives for raw-waveform models: 8-bit µ-law, a windowed-sinc resampler, and WAV files (stdlib `wave`).

µ-law: SaShiMi (Goel et al., "It's Raw! Audio Generation with State-Space Models", 2022) models 16 kHz audio as a
sequence of 256 µ-law levels, as WaveNet did. The reference (state-spaces/s4, src/dataloaders/audio.py) min-max
scales each clip to [-1, 1] before encoding, which moves a clip's silence away from 0.0 whenever its waveform is not
symmetric, so silence lands on a different code in every clip. Here the encoder takes audio already in [-1, 1] as
it is, and the corpus builder scales each clip by its peak, symmetrically (ssmlm/data/speech/digits.py): silence
0.0 is always code 128, and decode(128) is exactly 0.0.

Resampling: the band-limited (windowed-sinc) polyphase construction, as torchaudio's `resample` builds it, written
here in float64 so that no audio library is needed: for rates reduced to orig:new by their gcd, `new` phase filters
of a Kaiser-windowed sinc are applied as a strided convolution (one matrix product). The filter is torchaudio's
"kaiser_best" setting (64 zero crossings a side, low-pass at 0.9475 of the lower Nyquist frequency, Kaiser beta
14.77): a shorter filter (6 zero crossings) lets through a tenth of a tone above the new Nyquist frequency, which
then aliases.
"""

from __future__ import annotations

import functools
import math
import os
import wave
from pathlib import Path
from typing import BinaryIO

import torch

MU = 255
LEVELS = MU + 1
SILENCE = LEVELS // 2  # the µ-law code of 0.0
SAMPLE_RATE = 16000  # the rate every clip is resampled to (SC09's)
RESAMPLE_ZERO_CROSSINGS = 64
RESAMPLE_ROLLOFF = 0.9475
RESAMPLE_KAISER_BETA = 14.769656459379492
MAX_RESAMPLE_KERNEL_ELEMENTS = 2**26  # rates whose reduced ratio needs a larger filter bank are refused
PCM16_SCALE = 32768.0


class AudioFileError(ValueError):
    """An audio file that cannot be read: not a WAV file, a format other than PCM, truncated, or empty."""


def mu_law_encode(audio: torch.Tensor) -> torch.Tensor:
    """Map audio in [-1, 1] to µ-law codes 0..255 (a LongTensor of the same shape); 0.0 is code 128.

    e = sign(a) ln(1 + µ|a|) / ln(1 + µ), code = floor((e + 1) * 128), clamped to 0..255 (so a = 1 is 255)."""
    audio = audio.to(torch.float64).clamp(-1.0, 1.0)
    companded = torch.sign(audio) * torch.log1p(MU * audio.abs()) / math.log1p(MU)
    return torch.floor((companded + 1) * (LEVELS // 2)).clamp(0, MU).long()


def mu_law_decode(codes: torch.Tensor) -> torch.Tensor:
    """The inverse of mu_law_encode, to float64 audio in [-1, 1): code 128 is 0.0, code 0 is -1.0.

    e = code / 128 - 1, a = sign(e) ((1 + µ)^|e| - 1) / µ."""
    companded = codes.to(torch.float64) / (LEVELS // 2) - 1
    return torch.sign(companded) * (torch.pow(float(1 + MU), companded.abs()) - 1) / MU


@functools.lru_cache(maxsize=8)
def _resample_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """The `new` phase filters (taps, new) in float64 and the padding `width` (in input samples) before them; kept
    for the next call with the same rates (never modified)."""
    base = min(orig, new) * RESAMPLE_ROLLOFF  # the low-pass cutoff, in cycles per `orig` input samples
    width = math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / base)
    positions = torch.arange(-width, width + orig, dtype=torch.float64)[None] / orig
    phases = torch.arange(new, dtype=torch.float64)[:, None] / new
    t = ((positions - phases) * base).clamp(-RESAMPLE_ZERO_CROSSINGS, RESAMPLE_ZERO_CROSSINGS)
    beta = torch.tensor(RESAMPLE_KAISER_BETA, dtype=torch.float64)
    window = torch.special.i0(beta * torch.sqrt(1 - (t / RESAMPLE_ZERO_CROSSINGS) ** 2)) / torch.special.i0(beta)
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * (base / orig)).T.contiguous(), width


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a 1-D waveform from orig_rate to new_rate (samples per second), in float64; returns
    ceil(len * new_rate / orig_rate) samples. The input itself when the rates are equal (as float64)."""
    if waveform.dim() != 1:
        raise ValueError(f"resample takes a 1-D waveform, got shape {tuple(waveform.shape)}")
    if int(orig_rate) <= 0 or int(new_rate) <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
    waveform = waveform.to(torch.float64)
    if orig_rate == new_rate:
        return waveform
    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    taps = 2 * math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / (min(orig, new) * RESAMPLE_ROLLOFF)) + orig
    if new * taps > MAX_RESAMPLE_KERNEL_ELEMENTS:
        raise ValueError(f"cannot resample {orig_rate} Hz to {new_rate} Hz: their ratio {orig}:{new} needs a "
                         f"filter bank of {new * taps:,} taps; resample to a common rate first")
    kernel, width = _resample_kernel(orig, new)
    padded = torch.nn.functional.pad(waveform, (width, width + orig))
    # The strided convolution as a product: block i of the input against phase filter j gives output i * new + j.
    output = padded.unfold(0, kernel.shape[0], orig) @ kernel
    return output.reshape(-1)[: math.ceil(len(waveform) * new / orig)]


def _decode_pcm(data: bytes, sample_width: int, channels: int) -> torch.Tensor:
    """Little-endian PCM bytes (8-bit unsigned, 16/24/32-bit signed) to float64 in [-1, 1), channels averaged."""
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, sample_width).to(torch.int64)
    value = sum(raw[:, byte] << (8 * byte) for byte in range(sample_width))
    full_scale = 1 << (8 * sample_width - 1)
    if sample_width == 1:
        value = value - full_scale  # 8-bit WAV is unsigned, 128 is silence
    else:
        value = torch.where(value >= full_scale, value - 2 * full_scale, value)
    return (value.to(torch.float64) / full_scale).reshape(-1, channels).mean(dim=1)


def read_wav(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read a PCM WAV file; returns (float64 audio in [-1, 1), its sample rate).

    Accepted: uncompressed PCM with 8-bit (unsigned), 16-, 24- or 32-bit (signed) samples, any number of channels
    (averaged into one). Anything else raises AudioFileError, one line naming the file and the reason: a file that
    is not RIFF/WAVE, a compressed or floating-point WAV (µ-law, A-law, IEEE float, or WAVE_FORMAT_EXTENSIBLE, which
    Python's `wave` does not read before 3.12), a truncated or corrupt file, or one with no samples."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as file:
            channels, sample_width = file.getnchannels(), file.getsampwidth()
            rate, frames = file.getframerate(), file.getnframes()
            data = file.readframes(frames)
    except (wave.Error, EOFError) as error:
        reason = str(error) or "the file ends too early"
        raise AudioFileError(f"{path}: not a PCM WAV file that can be read ({reason})") from None
    except OSError as error:
        raise AudioFileError(f"{path}: {error.strerror or error}") from None
    if sample_width not in (1, 2, 3, 4):
        raise AudioFileError(f"{path}: {8 * sample_width}-bit samples are not supported (8, 16, 24 or 32-bit PCM)")
    if channels < 1 or rate <= 0:
        raise AudioFileError(f"{path}: its header is corrupt ({channels} channels at {rate} Hz)")
    if frames == 0:
        raise AudioFileError(f"{path}: the file holds no samples")
    frame_bytes = channels * sample_width
    if len(data) < frames * frame_bytes:
        raise AudioFileError(f"{path}: truncated: the header announces {frames} frames, the file holds "
                             f"{len(data) // frame_bytes}")
    return _decode_pcm(data, sample_width, channels), rate


def read_resampled(path: str | os.PathLike, sample_rate: int) -> tuple[torch.Tensor, int]:
    """read_wav, resampled to `sample_rate` where the file has another rate: (float64 mono audio in [-1, 1], the
    file's own rate). AudioFileError, naming the file, for a file read_wav refuses or whose rate cannot be resampled
    (a ratio of rates that needs too large a filter bank)."""
    audio, rate = read_wav(path)
    try:
        return resample(audio, rate, sample_rate), rate
    except ValueError as error:
        raise AudioFileError(f"{path}: {error}") from None


def load_audio(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """read_resampled's audio alone."""
    return read_resampled(path, sample_rate)[0]


def pcm16_bytes(audio: torch.Tensor) -> bytes:
    """Float audio in [-1, 1] as little-endian 16-bit PCM (x * 32768 rounded half to even, clipped to the int16
    range), the inverse of read_wav's scaling for 16-bit files."""
    values = torch.round(audio.to(torch.float64) * PCM16_SCALE).clamp(-PCM16_SCALE, PCM16_SCALE - 1)
    return values.to(torch.int16).numpy().astype("<i2").tobytes()


def write_wav(path: str | os.PathLike | BinaryIO, audio: torch.Tensor, rate: int) -> None:
    """Write 1-D float audio in [-1, 1] as a 16-bit PCM mono WAV file, or into a binary file object (the same audio
    always gives the same bytes)."""
    if audio.dim() != 1:
        raise ValueError(f"write_wav takes a 1-D waveform, got shape {tuple(audio.shape)}")
    with wave.open(path if hasattr(path, "write") else str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(int(rate))
        file.writeframes(pcm16_bytes(audio))
