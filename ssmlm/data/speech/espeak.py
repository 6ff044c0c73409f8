"""eSpeak NG, the text-to-speech engine the spoken-digits corpus is made with, through ctypes.

The engine comes from the PyPI package `espeakng-loader` (the `audio` extra: `pip install 'ssmlm[audio]'`), which
ships eSpeak NG's shared library and its data (dictionaries, phoneme tables, voices) and nothing else; this module
loads the library with ctypes, so no compiler, binary or system package is needed. eSpeak NG is GPL-3 and loaded at
run time, never linked.

Determinism takes two measures. The library keeps static synthesis state between calls (re-initialising does not
reset it), so the same utterance repeated within one process can come out different: the engine is initialised once
in this process, which never synthesises itself, and every utterance is spoken by a forked child that inherits the
freshly initialised state and sends its samples back through a pipe (`synthesize`), or by a worker of a fork pool
that takes exactly one task before it is replaced (`synthesize_many`, which runs utterances in parallel and returns
them in order). And the noise generator that the breathy and rough variants use (f2, f3, f5, whisper, ...) is not
seeded the same in every process: each utterance seeds it (espeak_ng_SetRandSeed) with its `noise_seed` first.

The engine speaks at 22,050 samples per second, 16-bit mono.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "espeakng-loader"
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_AUTO = 0
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4

# The English voices (accents) that read Latin script; en-Shaw, which expects the Shavian alphabet, is left out.
ENGLISH_VOICES = ("en", "en-029", "en-GB-scotland", "en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-GB-x-rp", "en-US",
                  "en-US-nyc")
# Voice variants (timbres: formants, pitch range, voicing) that sound like a human speaker; the robotic, whispering,
# croaking and novelty variants are left out. All are files of espeak-ng-data/voices/!v.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "Andy", "Annie", "Denis", "Gene", "Michael", "Mike", "linda", "steph")


class SpeechEngineError(RuntimeError):
    """eSpeak NG is not installed, or refused a voice or an utterance."""


@dataclass(frozen=True)
class Utterance:
    """What to say and how: a voice (accent), a variant (timbre), words per minute, the pitch and pitch range on
    eSpeak's 0-99 scales (50 is the voice's own), and the seed of the engine's noise (breath, roughness)."""

    text: str
    voice: str
    variant: str
    words_per_minute: int = 175
    pitch: int = 50
    pitch_range: int = 50
    noise_seed: int = 0


class Engine:
    """The loaded and initialised library (one per process: see `engine()`)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise SpeechEngineError(f"eSpeak NG is not installed (the {PACKAGE} package): pip install "
                                    f"'ssmlm[audio]'") from None
        self.data_path = Path(espeakng_loader.get_data_path())
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), 0)
        if self.rate <= 0:
            raise SpeechEngineError(f"eSpeak NG could not be initialised with its data at {self.data_path}")
        self.version = self.lib.espeak_Info(None).decode()
        self.chunks: list[bytes] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self.callback = callback_type(self._collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self.chunks.append(ctypes.string_at(samples, count * 2))
        return 0

    def speak_here(self, utterance: Utterance) -> bytes:
        """Synthesise in this process: only in a fresh child (a second call in one process is not reproducible)."""
        self.chunks.clear()
        spec = f"{utterance.voice}+{utterance.variant}"
        if self.lib.espeak_SetVoiceByName(spec.encode()) != 0:
            raise SpeechEngineError(f"eSpeak NG has no voice {spec!r}")
        for parameter, value in ((ESPEAK_RATE, utterance.words_per_minute), (ESPEAK_PITCH, utterance.pitch),
                                 (ESPEAK_RANGE, utterance.pitch_range)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self.lib.espeak_ng_SetRandSeed(int(utterance.noise_seed))
        text = utterance.text.encode()
        status = self.lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_AUTO, None, None)
        if status != 0 or self.lib.espeak_Synchronize() != 0:
            raise SpeechEngineError(f"eSpeak NG failed to speak {utterance.text!r} with {spec!r} (status {status})")
        return b"".join(self.chunks)


_engine: Engine | None = None


def engine() -> Engine:
    """The process's engine, loaded and initialised on first use (never used to synthesise in this process)."""
    global _engine
    if _engine is None:
        _engine = Engine()
    return _engine


def engine_version() -> str:
    """eSpeak NG's version, e.g. "1.52.0"."""
    return engine().version


def package_version() -> str:
    """The installed espeakng-loader's version."""
    from importlib.metadata import version

    engine()  # the one-line error when it is missing
    return version(PACKAGE)


def sample_rate() -> int:
    """The engine's output rate in samples per second (22,050)."""
    return engine().rate


def english_voices() -> list[str]:
    """The English voices of ENGLISH_VOICES that the installed data has (all of them in espeakng-loader 0.2.4)."""
    languages = engine().data_path / "lang" / "gmw"
    return [voice for voice in ENGLISH_VOICES if (languages / voice).is_file()]


def voice_variants() -> list[str]:
    """The variants of VARIANTS that the installed data has (all of them in espeakng-loader 0.2.4)."""
    folder = engine().data_path / "voices" / "!v"
    return [variant for variant in VARIANTS if (folder / variant).is_file()]


def _speak_in_child(utterance: Utterance) -> bytes:
    """Fork, speak in the child, read its samples (or its error message) through a pipe."""
    state = engine()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 0
        try:
            os.close(read_end)
            try:
                payload = b"\0" + state.speak_here(utterance)
            except Exception as error:
                payload, code = b"\1" + str(error).encode(), 1
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if payload[:1] == b"\1":
        raise SpeechEngineError(payload[1:].decode(errors="replace"))
    if status != 0 or payload[:1] != b"\0":
        raise SpeechEngineError(f"the eSpeak NG child process for {utterance.text!r} failed (wait status {status})")
    return payload[1:]


def synthesize(text: str, voice: str, variant: str, words_per_minute: int = 175, pitch: int = 50,
               pitch_range: int = 50, noise_seed: int = 0) -> tuple[bytes, int]:
    """Speak `text`; returns the samples as 16-bit mono PCM bytes (native byte order, as the engine writes them),
    and the rate (22,050).

    Each call runs in a forked child of this process, so the same arguments always give the same bytes."""
    utterance = Utterance(text, voice, variant, words_per_minute, pitch, pitch_range, noise_seed)
    return _speak_in_child(utterance), sample_rate()


def _speak_in_worker(utterance: Utterance) -> bytes:
    return engine().speak_here(utterance)  # a fresh fork-pool worker, which takes one task only


def synthesize_many(utterances: Iterable[Utterance], workers: int | None = None) -> Iterator[bytes]:
    """Speak each utterance, `workers` at a time (default: the CPUs this process may use), yielding the PCM bytes in
    the order given. Each utterance gets a worker process of its own, forked from this process."""
    engine()  # initialised here, before the workers fork
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers <= 1:
        for utterance in utterances:
            yield _speak_in_child(utterance)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, maxtasksperchild=1) as pool:
        yield from pool.imap(_speak_in_worker, utterances, chunksize=1)
