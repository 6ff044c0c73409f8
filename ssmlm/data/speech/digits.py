"""The spoken-digits corpus: "zero" to "nine" spoken by eSpeak NG, 1-second 16 kHz clips, in the spirit of SC09.

SaShiMi's SC09 benchmark (the digits of the Speech Commands data set) cannot be downloaded here, so a corpus of the
same shape is made offline with a pinned text-to-speech engine (espeak.py):

* a speaker is an (English voice, variant) pair: the voice is the accent (8 of them), the variant the timbre
  (formants, pitch range, voicing: 24 human-sounding ones); every speaker says every digit `takes` times, each take
  at a seeded speaking rate (110-200 words per minute), pitch (25-75) and pitch range (30-70) on eSpeak's scales;
* each utterance is trimmed of the exact zeros the engine puts before and after the word, resampled from 22,050 to
  16,000 Hz (audio.resample), scaled by its peak to 0.9 (symmetrically, so silence stays 0.0: µ-law code 128), and
  placed at a seeded offset in a 1-second clip of 16,000 samples (a word longer than 1 s is cut to its first second,
  and counted in the manifest);
* seeded Gaussian dither of standard deviation 0.001 (of full scale) is added to the whole clip: without it the
  silence around the word would be exact digital zeros, a run of one µ-law code that a model predicts for free,
  which would make the negative log-likelihood artificially easy;
* the clips are written as 16-bit PCM mono WAV files OUT/{split}/{digit}_{voice}_{variant}_{take}.wav; a model reads
  them with audio.read_wav and µ-law encodes them itself;
* the split is by variant: the variants are shuffled with the seed and the first 15% (at least one) go to
  validation, the next 15% (at least one) to test, the rest to train, with all their voices, digits and takes. So
  the test timbres are never heard in training (the accents are; en-US and en-US-nyc sound the same for most
  digits).

Every random choice comes from a generator seeded by the seed and the clip's own name (the engine's noise too), and
every utterance is spoken by a fresh process forked from an engine that never spoke (espeak.py), so two builds with
the same seed, engine and torch are byte-identical, whatever the number of worker processes. OUT/manifest.json
records the engine and its package's version, every setting, the split rule, the counts per split and digit, and
each file's sha256 and parameters; it holds no timestamps or absolute paths, so it is byte-identical too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...tooling.staging import build_in_place
from . import espeak
from .audio import SAMPLE_RATE, resample, write_wav

BUILDER_VERSION = "1.0.0"
MANIFEST_NAME = "manifest.json"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "validation", "test")
HELD_OUT_VARIANT_FRACTION = 0.15  # of the variants, for validation and again for test
CLIP_SAMPLES = 16000
PEAK = 0.9
DITHER_STD = 1e-3
WORDS_PER_MINUTE = (110, 200)
PITCH = (25, 75)
PITCH_RANGE = (30, 70)
SPLIT_RULE = ("variants sorted by name, shuffled by random.Random('speech-digits:{seed}:splits'); the first k go to "
              "validation, the next k to test, the rest to train, k = max(1, round(held_out_variant_fraction * "
              "variants)); a clip goes to its variant's split")


class ManifestMismatchError(ValueError):
    """Files of a built speech corpus are missing, differ from the sha256 its manifest records, or are unlisted."""


class CorpusDirectoryError(ValueError):
    """The output directory holds files that are not a speech corpus's, which a build must not replace."""


@dataclass(frozen=True)
class Clip:
    """One clip to make: what is said by whom, how, and where it goes."""

    digit: str
    voice: str
    variant: str
    take: int
    split: str
    words_per_minute: int
    pitch: int
    pitch_range: int
    placement: float  # where the word starts, as a fraction of the room left in the clip
    noise_seed: int  # the engine's (espeak.Utterance)
    dither_seed: int

    @property
    def path(self) -> str:
        parts = (self.digit, self.voice, self.variant, str(self.take))
        return f"{self.split}/" + "_".join(re.sub(r"[^A-Za-z0-9-]+", "-", part) for part in parts) + ".wav"


def assign_variant_splits(variants: Sequence[str], seed: int) -> dict[str, str]:
    """The split of each variant (SPLIT_RULE): needs at least three variants, one for each split."""
    order = sorted(set(variants))
    if len(order) < len(SPLITS):
        raise ValueError(f"the split by variant needs at least {len(SPLITS)} variants, got {order}")
    random.Random(f"speech-digits:{seed}:splits").shuffle(order)
    held_out = max(1, round(HELD_OUT_VARIANT_FRACTION * len(order)))
    return {variant: ("validation" if index < held_out else "test" if index < 2 * held_out else "train")
            for index, variant in enumerate(order)}


def plan_clips(seed: int, voices: Sequence[str], variants: Sequence[str], takes: int,
               digits: Sequence[str] = DIGITS) -> list[Clip]:
    """Every clip of a build, in a fixed order, each with its parameters drawn from its own seeded generator (so a
    clip's parameters do not depend on which other voices, variants or digits the build has)."""
    split_of = assign_variant_splits(variants, seed)
    clips = []
    for variant in sorted(set(variants)):
        for voice in sorted(set(voices)):
            for digit in digits:
                for take in range(takes):
                    rng = random.Random(f"speech-digits:{seed}:{digit}:{voice}:{variant}:{take}")
                    clips.append(Clip(digit, voice, variant, take, split_of[variant],
                                      words_per_minute=rng.randint(*WORDS_PER_MINUTE), pitch=rng.randint(*PITCH),
                                      pitch_range=rng.randint(*PITCH_RANGE), placement=rng.random(),
                                      noise_seed=rng.getrandbits(31), dither_seed=rng.getrandbits(63)))
    return clips


def render_clip(pcm: bytes, engine_rate: int, clip: Clip) -> tuple[torch.Tensor, dict]:
    """The engine's 16-bit samples of one word to the 1-second clip (the module docstring's steps); returns the
    float64 clip and what the manifest records about it (speech samples, offset, whether it was cut)."""
    samples = torch.frombuffer(bytearray(pcm), dtype=torch.int16) if pcm else torch.zeros(0, dtype=torch.int16)
    voiced = torch.nonzero(samples).flatten()
    if len(voiced) == 0:
        raise espeak.SpeechEngineError(f"eSpeak NG produced only silence for {clip.path}")
    word = samples[voiced[0]: voiced[-1] + 1].to(torch.float64) / 32768
    word = resample(word, engine_rate, SAMPLE_RATE)
    word = word * (PEAK / word.abs().max())
    cut = len(word) > CLIP_SAMPLES
    word = word[:CLIP_SAMPLES]
    offset = int(clip.placement * (CLIP_SAMPLES - len(word) + 1))
    audio = torch.zeros(CLIP_SAMPLES, dtype=torch.float64)
    audio[offset: offset + len(word)] = word
    generator = torch.Generator().manual_seed(clip.dither_seed)
    audio += DITHER_STD * torch.randn(CLIP_SAMPLES, generator=generator, dtype=torch.float64)
    return audio, {"speech_samples": len(word), "offset": offset, "cut": cut}


def check_replaceable(out: Path) -> None:
    """Raise CorpusDirectoryError unless `out` is absent, empty, or holds only a speech corpus's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CorpusDirectoryError(f"{out} is a file, not a corpus folder; choose another output folder")
    foreign = sorted(name for name in (path.relative_to(out).as_posix() for path in out.rglob("*"))
                     if name not in (MANIFEST_NAME, *SPLITS)
                     and not (name.split("/")[0] in SPLITS and name.count("/") == 1 and name.endswith(".wav")))
    if foreign:
        raise CorpusDirectoryError(f"{out} holds files that are not a speech corpus's ({', '.join(foreign[:3])}"
                                   f"{', ...' if len(foreign) > 3 else ''}); choose another output folder")


def build_digits_corpus(out_dir: str | os.PathLike, seed: int = 0, voices: Sequence[str] | None = None,
                        variants: Sequence[str] | None = None, takes: int = 2, digits: Sequence[str] = DIGITS,
                        progress: bool = True, workers: int | None = None) -> dict:
    """Build the corpus into `out_dir` (default voices and variants: all of espeak.ENGLISH_VOICES and
    espeak.VARIANTS); returns the manifest, also written to OUT/manifest.json.

    `workers` processes speak in parallel (default: the CPUs this process may use); a tqdm bar shows the progress
    unless `progress` is False. The corpus is written into a temporary folder beside OUT and renamed to OUT once
    complete, so a failed or interrupted build leaves no OUT behind; an earlier speech corpus in OUT is replaced,
    anything else there is refused."""
    voices = list(espeak.english_voices() if voices is None else voices)
    variants = list(espeak.voice_variants() if variants is None else variants)
    unknown = sorted(set(voices) - set(espeak.english_voices())) + sorted(set(variants) - set(espeak.VARIANTS))
    if unknown or not voices or takes < 1 or not digits or not set(digits) <= set(DIGITS):
        raise ValueError(f"voices must be among {espeak.ENGLISH_VOICES}, variants among {espeak.VARIANTS}, digits "
                         f"among {DIGITS}, and takes at least 1 (unknown: {unknown}, takes {takes}, digits "
                         f"{list(digits)})")
    out = Path(out_dir)
    check_replaceable(out)
    clips = plan_clips(seed, voices, variants, takes, digits)
    return build_in_place(out, lambda folder: write_corpus(clips, folder, seed, takes, progress, workers))


def write_corpus(clips: list[Clip], out: Path, seed: int, takes: int, progress: bool, workers: int | None) -> dict:
    """Speak, render and write every clip into `out`, then the manifest; returns the manifest."""
    from tqdm.auto import tqdm

    for split in SPLITS:
        (out / split).mkdir()
    rate = espeak.sample_rate()
    utterances = (espeak.Utterance(clip.digit, clip.voice, clip.variant, clip.words_per_minute, clip.pitch,
                                   clip.pitch_range, clip.noise_seed) for clip in clips)
    files = {}
    spoken = espeak.synthesize_many(utterances, workers)
    for clip, pcm in tqdm(zip(clips, spoken), total=len(clips), desc="speaking digits", unit="clip",
                          disable=not progress):
        audio, placed = render_clip(pcm, rate, clip)
        data = wav_bytes(audio)
        (out / clip.path).write_bytes(data)
        parameters = {key: value for key, value in asdict(clip).items() if key not in ("split", "placement")}
        files[clip.path] = {**parameters, **placed, "label": DIGITS.index(clip.digit),
                            "sha256": hashlib.sha256(data).hexdigest()}
    manifest = corpus_manifest(clips, files, seed, takes)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def wav_bytes(audio: torch.Tensor) -> bytes:
    """The 16-bit PCM mono WAV file of a clip, as bytes (hashed and written at once)."""
    buffer = io.BytesIO()
    write_wav(buffer, audio, SAMPLE_RATE)
    return buffer.getvalue()


def corpus_manifest(clips: list[Clip], files: dict[str, dict], seed: int, takes: int) -> dict:
    """The manifest of a build: engine, settings, split rule, counts, and each file's entry."""
    digits = sorted({clip.digit for clip in clips}, key=DIGITS.index)
    splits = {}
    for split in SPLITS:
        chosen = [clip for clip in clips if clip.split == split]
        splits[split] = {
            "variants": sorted({clip.variant for clip in chosen}),
            "speakers": len({(clip.voice, clip.variant) for clip in chosen}),
            "clips": len(chosen),
            "per_digit": {digit: sum(clip.digit == digit for clip in chosen) for digit in digits},
        }
    return {
        "builder": {"module": __name__, "version": BUILDER_VERSION},
        "engine": {"name": "eSpeak NG", "version": espeak.engine_version(), "package": espeak.PACKAGE,
                   "package_version": espeak.package_version(), "sample_rate": espeak.sample_rate()},
        "settings": {
            "seed": seed,
            "digits": digits,
            "voices": sorted({clip.voice for clip in clips}),
            "variants": sorted({clip.variant for clip in clips}),
            "takes": takes,
            "words_per_minute": list(WORDS_PER_MINUTE),
            "pitch": list(PITCH),
            "pitch_range": list(PITCH_RANGE),
            "sample_rate": SAMPLE_RATE,
            "clip_samples": CLIP_SAMPLES,
            "peak": PEAK,
            "dither_std": DITHER_STD,
            "dither": "seeded Gaussian noise over the whole clip, so that the silence is not exact digital zeros "
                      "(a run of one µ-law code, which would make the negative log-likelihood artificially easy)",
            "format": "16-bit PCM mono WAV, OUT/{split}/{digit}_{voice}_{variant}_{take}.wav",
            "processing": "exact zeros at the ends trimmed; resampled with a Kaiser-windowed sinc (ssmlm.data."
                          "speech.audio.resample); scaled by the peak to `peak`; placed at a seeded offset in the "
                          "clip (cut to its first clip_samples if longer); dither added",
            "held_out_variant_fraction": HELD_OUT_VARIANT_FRACTION,
            "split_rule": SPLIT_RULE,
        },
        "splits": splits,
        "clips_cut_to_clip_samples": sum(entry["cut"] for entry in files.values()),
        "files": files,
    }


def verify_digits_corpus(out_dir: str | os.PathLike) -> dict:
    """Re-hash every file a speech corpus manifest lists; raise ManifestMismatchError naming each missing or
    changed file, and each WAV file the manifest does not list. Returns the manifest."""
    out = Path(out_dir)
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.exists():
        raise ManifestMismatchError(f"{manifest_path} does not exist")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        path = out / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != entry["sha256"]:
            problems.append(f"{path}: sha256 is {actual}, manifest records {entry['sha256']}")
    listed = set(manifest["files"])
    problems += [f"{path}: not in the manifest" for split in SPLITS for path in sorted((out / split).glob("*.wav"))
                 if path.relative_to(out).as_posix() not in listed]
    if problems:
        raise ManifestMismatchError(f"{len(problems)} file(s) differ from {manifest_path}:\n" + "\n".join(problems))
    return manifest
