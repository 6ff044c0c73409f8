"""Audio from a model trained by the audio-lm task (SaShiMi, issue 30): clips sampled recurrently, each with its
log-likelihood under the model (the paper sorts its samples by it); the speed of recurrent generation against
recomputing the whole prefix each step; how loud long generations get against real clips (the stability check);
and a picture of waveforms and spectrograms.

Generation is transformers' `generate()`: the sequence starts from silence (code 128, the token the task puts
before every training window), then the prompt clip's codes if any, and samples one code per step from the model's
softmax. With the cache (the default) every block steps its recurrent state; with `use_cache=False` transformers
re-runs the whole prefix every step, which for SaShiMi is the FFT convolution over everything so far.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import set_seed
from transformers.generation.streamers import BaseStreamer

from ..data.speech.audio import LEVELS, SAMPLE_RATE, SILENCE, mu_law_decode
from ..training.audio_task import AudioLanguageModeling
from ..training.checkpoints import CONFIG_FILE

LOUDNESS_WINDOW_S = 0.25  # the stability check's RMS is taken over windows of this length
SOUNDING_FRACTION = 0.1  # a window sounds when its RMS is at least this fraction of the loudest real window's
SPECTROGRAM_FFT = 512
SPECTROGRAM_HOP = 128
AUDIO_TASK = AudioLanguageModeling.name


@dataclass
class GeneratedClip:
    """One generated clip: its codes after the prompt, the prompt's codes, and its log-likelihood (nats, summed over
    the generated samples) under the model that made it."""

    codes: torch.Tensor
    prompt: torch.Tensor
    log_likelihood: float

    @property
    def bits_per_sample(self) -> float:
        return -self.log_likelihood / math.log(2) / len(self.codes)

    def audio(self) -> torch.Tensor:
        """The prompt, then the generated codes, as audio."""
        return mu_law_decode(torch.cat([self.prompt, self.codes]))


class StepProgress(BaseStreamer):
    """A progress bar for generate(): it calls put() once with the prompt, then once per generated step."""

    def __init__(self, total: int, description: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=description, unit="sample", dynamic_ncols=True, leave=False)
        self.seen_prompt = False

    def put(self, value) -> None:
        if self.seen_prompt:
            self.bar.update(1)
        self.seen_prompt = True

    def end(self) -> None:
        self.bar.close()


def training_settings(model_dir: Path) -> dict:
    """The config values the model in `model_dir` was trained with (the train_config.yaml the trainer saves beside
    it); {} for a model saved some other way, or a file that is no YAML mapping."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return values if isinstance(values, dict) else {}


def check_audio_model(model, settings: dict) -> int | None:
    """Refuse a model not trained on audio (a text model given by mistake): its vocabulary is not the 256 µ-law
    codes, or its training config names another task. Returns the window (samples) it was trained on, if known."""
    if model.config.vocab_size != LEVELS:
        raise ValueError(f"this is not an audio model: its vocabulary has {model.config.vocab_size} tokens, not the "
                         f"{LEVELS} µ-law codes of the {AUDIO_TASK} task")
    if settings.get("task", AUDIO_TASK) != AUDIO_TASK:
        raise ValueError(f"this is not an audio model: it was trained by the {settings['task']} task, not "
                         f"{AUDIO_TASK}")
    window = (settings.get("data") or {}).get("seq_len")
    return window if isinstance(window, int) else None


@torch.inference_mode()
def sample_codes(model, num_clips: int, num_samples: int, prompt: torch.Tensor | None = None,
                 temperature: float = 1.0, top_k: int = 0, use_cache: bool = True,
                 progress: str | None = None) -> torch.Tensor:
    """(num_clips, num_samples) codes sampled after silence and the prompt's codes, all clips in one batch."""
    prompt = torch.empty(0, dtype=torch.long) if prompt is None else prompt.long()
    start = torch.cat([torch.tensor([SILENCE]), prompt]).to(model.device)
    input_ids = start.expand(num_clips, -1)
    streamer = StepProgress(num_samples, progress) if progress else None
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                            temperature=temperature, top_k=top_k, top_p=1.0, max_new_tokens=num_samples,
                            use_cache=use_cache, streamer=streamer, pad_token_id=SILENCE)
    return output[:, input_ids.shape[1]:].cpu()


@torch.inference_mode()
def log_likelihoods(model, prompt: torch.Tensor, codes: torch.Tensor) -> list[float]:
    """Each row's log-likelihood (nats) of `codes` after silence and `prompt`, from one convolutional pass."""
    rows = []
    for row in codes:
        sequence = torch.cat([torch.tensor([SILENCE]), prompt.long(), row.long()]).to(model.device)
        logits = model(input_ids=sequence[None, :-1]).logits[0, len(prompt):].double()
        rows.append(torch.log_softmax(logits, dim=-1).gather(1, row[:, None].to(model.device).long()).sum().item())
    return rows


def generate_clips(model, num_clips: int, num_samples: int, prompt: torch.Tensor | None = None,
                   temperature: float = 1.0, top_k: int = 0, seed: int | None = None, batch_size: int | None = None,
                   progress: bool = True) -> list[GeneratedClip]:
    """`num_clips` clips of `num_samples` samples each (after the prompt's), in batches of `batch_size`, sorted by
    their log-likelihood under the model, most likely first."""
    if seed is not None:
        set_seed(seed)
    prompt = torch.empty(0, dtype=torch.long) if prompt is None else prompt.long()
    batch_size = batch_size or num_clips
    clips = []
    for first in range(0, num_clips, batch_size):
        count = min(batch_size, num_clips - first)
        description = f"clips {first + 1}-{first + count} of {num_clips}" if progress else None
        codes = sample_codes(model, count, num_samples, prompt, temperature, top_k, progress=description)
        clips += [GeneratedClip(row, prompt, value) for row, value in zip(codes, log_likelihoods(model, prompt, codes))]
    return sorted(clips, key=lambda clip: -clip.log_likelihood)


def generation_speed(model, num_samples: int, seed: int = 0) -> dict:
    """Samples per second generating one clip of `num_samples` samples recurrently (the cache) and by re-running the
    whole prefix each step (no cache), from the same seed: the two must give the same codes."""
    timings = {}
    codes = {}
    for name, use_cache in (("recurrent", True), ("reconvolving", False)):
        set_seed(seed)
        start = time.perf_counter()
        codes[name] = sample_codes(model, 1, num_samples, use_cache=use_cache,
                                   progress=f"{name} generation")
        timings[name] = time.perf_counter() - start
    return {
        "samples": num_samples,
        "recurrent_samples_per_s": num_samples / timings["recurrent"],
        "reconvolving_samples_per_s": num_samples / timings["reconvolving"],
        "speedup": timings["reconvolving"] / timings["recurrent"],
        "same_codes": bool(torch.equal(codes["recurrent"], codes["reconvolving"])),
    }


def loudness(audio: torch.Tensor, window_s: float = LOUDNESS_WINDOW_S) -> torch.Tensor:
    """RMS of each whole window of `window_s` seconds (a last partial window is left out)."""
    window = int(window_s * SAMPLE_RATE)
    windows = audio[: len(audio) // window * window].reshape(-1, window)
    return windows.pow(2).mean(dim=1).sqrt()


def power_frames(audio: torch.Tensor) -> torch.Tensor:
    """The STFT's power spectrum, frame × frequency (the picture's frames); a clip shorter than one frame is padded
    with silence to one."""
    audio = torch.nn.functional.pad(audio, (0, max(0, SPECTROGRAM_FFT - len(audio))))
    window = torch.hann_window(SPECTROGRAM_FFT, dtype=audio.dtype)
    return torch.stft(audio, SPECTROGRAM_FFT, SPECTROGRAM_HOP, window=window, return_complex=True).abs().pow(2).T


def sound_measures(clips: list[torch.Tensor], window_s: float, sounding_rms: float | None = None) -> dict:
    """Loudness and noisiness of clips: the loudest RMS window; the share of windows that sound (RMS at least
    `sounding_rms`, by default SOUNDING_FRACTION of the loudest); the median spectral flatness (geometric over
    arithmetic mean of the power spectrum: near 0 for a tone or a voiced sound, about 0.56 for white noise) of the
    STFT frames that sound; and the share of samples at the two extreme codes (clipping)."""
    windows = torch.cat([loudness(clip, window_s) for clip in clips])
    loudest = windows.max().item()
    sounding_rms = SOUNDING_FRACTION * loudest if sounding_rms is None else sounding_rms
    frames = torch.cat([power_frames(clip) for clip in clips])
    # A frame's RMS from its power spectrum (Parseval; a Hann window's mean square is 3/8).
    frame_rms = (frames.mean(dim=1) / (SPECTROGRAM_FFT * 3 / 8)).sqrt()
    sounding = frames[frame_rms >= sounding_rms] + 1e-20
    flatness = sounding.log().mean(dim=1).exp() / sounding.mean(dim=1)
    lowest, highest = mu_law_decode(torch.tensor([0, LEVELS - 1])).tolist()
    extreme = torch.cat([(clip <= lowest) | (clip >= highest) for clip in clips])
    return {
        "loudest_rms": loudest,
        "sounding_share": (windows >= sounding_rms).double().mean().item(),
        "flatness": flatness.median().item() if len(flatness) else None,
        "extreme_share": extreme.double().mean().item(),
    }


def stability(clips: list[torch.Tensor], real: list[torch.Tensor], seconds: list[float]) -> dict:
    """Whether generated audio stays within what real audio does or runs away, per span (the first s seconds of the
    clips, for each s in `seconds`): `sound_measures` of the generated clips against the real clips', the sounding
    threshold set by the real clips. A span is "stable" when no window is louder than the loudest real one (no
    blow-up); how much of it sounds and how noise-like it is are reported beside. The windows are
    LOUDNESS_WINDOW_S long, or the shortest span or real clip where that is shorter."""
    window_s = min(LOUDNESS_WINDOW_S, *seconds, *(len(clip) / SAMPLE_RATE for clip in real))
    report = {"window_seconds": window_s, "real": sound_measures(real, window_s), "spans": []}
    sounding_rms = SOUNDING_FRACTION * report["real"]["loudest_rms"]
    for span in seconds:
        measures = sound_measures([clip[: int(span * SAMPLE_RATE)] for clip in clips], window_s, sounding_rms)
        report["spans"].append({"seconds": span, **measures,
                                "stable": measures["loudest_rms"] <= report["real"]["loudest_rms"]})
    return report


def spectrogram_db(audio: torch.Tensor) -> torch.Tensor:
    """Log-magnitude STFT (dB, frequency × frame) for the picture."""
    return 10 * torch.log10(power_frames(audio).T.clamp_min(1e-10))


def write_picture(clips: list[tuple[str, torch.Tensor]], path: Path) -> None:
    """One row per (title, audio) clip: its waveform and its spectrogram, on a shared time axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(len(clips), 2, figsize=(12, 2.2 * len(clips)), squeeze=False)
    for (waveform_axis, spectrum_axis), (title, audio) in zip(axes, clips):
        seconds = len(audio) / SAMPLE_RATE
        waveform_axis.plot(torch.arange(len(audio)) / SAMPLE_RATE, audio.numpy(), linewidth=0.3)
        waveform_axis.set(xlim=(0, seconds), ylim=(-1, 1), title=title, xlabel="seconds")
        spectrum_axis.imshow(spectrogram_db(audio.double()).numpy(), origin="lower", aspect="auto", cmap="magma",
                             extent=(0, seconds, 0, SAMPLE_RATE / 2000), vmin=-60, vmax=40)
        spectrum_axis.set(title=f"{title}: spectrogram", xlabel="seconds", ylabel="kHz")
    figure.tight_layout()
    figure.savefig(path, dpi=72)
    plt.close(figure)
