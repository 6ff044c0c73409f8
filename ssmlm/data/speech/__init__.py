"""Speech data for raw-audio models (SaShiMi, issue 30): audio primitives and an offline spoken-digits corpus.

* `audio`: 8-bit µ-law encoding and decoding, a windowed-sinc resampler (float64, torch only), and reading and
  writing PCM WAV files with the standard library (a one-line AudioFileError for a file that cannot be read);
* `espeak`: eSpeak NG through ctypes on the library the `espeakng-loader` package ships (the `audio` extra), each
  utterance spoken by a forked process so that the same arguments always give the same samples;
* `digits`: building the spoken-digits corpus (1-second 16 kHz clips of "zero".."nine", split by voice variant so
  that the test timbres are unheard in training) with its manifest, and verifying a build against it.

The command line is `ssmlm-build-speech-corpus` (ssmlm/cli/build_speech_corpus.py).
"""

from .audio import (
    LEVELS,
    SAMPLE_RATE,
    SILENCE,
    AudioFileError,
    load_audio,
    read_resampled,
    mu_law_decode,
    mu_law_encode,
    read_wav,
    resample,
    write_wav,
)
from .digits import (
    CLIP_SAMPLES,
    DIGITS,
    MANIFEST_NAME,
    SPLITS,
    CorpusDirectoryError,
    ManifestMismatchError,
    build_digits_corpus,
    verify_digits_corpus,
)
from .espeak import SpeechEngineError, engine_version, english_voices, synthesize, voice_variants

__all__ = [
    "CLIP_SAMPLES",
    "DIGITS",
    "LEVELS",
    "MANIFEST_NAME",
    "SAMPLE_RATE",
    "SILENCE",
    "SPLITS",
    "AudioFileError",
    "CorpusDirectoryError",
    "ManifestMismatchError",
    "SpeechEngineError",
    "build_digits_corpus",
    "engine_version",
    "english_voices",
    "load_audio",
    "mu_law_decode",
    "mu_law_encode",
    "read_resampled",
    "read_wav",
    "resample",
    "synthesize",
    "verify_digits_corpus",
    "voice_variants",
    "write_wav",
]
