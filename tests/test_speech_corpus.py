"""The speech data of issue 30: µ-law, the resampler, WAV reading and its errors, eSpeak NG's determinism, and the
spoken-digits corpus (a tiny build: 2 voices x 3 variants x 2 digits x 1 take) and its command line."""

import hashlib
import math
import struct
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import torch

from ssmlm.cli import build_speech_corpus
from ssmlm.data.speech import (
    AudioFileError,
    CorpusDirectoryError,
    ManifestMismatchError,
    SpeechEngineError,
    build_digits_corpus,
    espeak,
    load_audio,
    mu_law_decode,
    mu_law_encode,
    read_wav,
    resample,
    verify_digits_corpus,
    write_wav,
)

REPO = Path(__file__).resolve().parents[1]
TINY = {"voices": ["en", "en-US"], "variants": ["m1", "f2", "klatt"], "digits": ["zero", "seven"], "takes": 1}


def sine(frequency: float, rate: int, seconds: float = 1.0) -> torch.Tensor:
    return torch.sin(2 * math.pi * frequency * torch.arange(int(rate * seconds), dtype=torch.float64) / rate)


# µ-law

def test_mu_law_fixes_silence_and_the_ends():
    assert mu_law_encode(torch.tensor([0.0])).item() == 128
    assert mu_law_decode(torch.tensor([128])).item() == 0.0
    assert mu_law_encode(torch.tensor([-1.0, 1.0, -5.0, 5.0])).tolist() == [0, 255, 0, 255]
    assert mu_law_decode(torch.tensor([0])).item() == -1.0


def test_mu_law_is_monotone_and_round_trips():
    audio = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    codes = mu_law_encode(audio)
    assert codes.dtype == torch.long and (codes.diff() >= 0).all() and set(codes.tolist()) == set(range(256))
    error = (mu_law_decode(codes) - audio).abs()
    assert (error <= 0.045 * audio.abs() + 2e-4).all()  # one step of 1/128 in the companded domain
    assert (mu_law_decode(torch.arange(256)).diff() > 0).all()


# resampling

def test_resample_keeps_a_tone_below_the_new_nyquist_frequency():
    resampled = resample(sine(440, 22050), 22050, 16000)
    assert len(resampled) == 16000 and resampled.dtype == torch.float64
    assert (resampled - sine(440, 16000))[500:-500].abs().max() < 1e-4
    upsampled = resample(sine(1000, 8000), 8000, 16000)
    assert (upsampled - sine(1000, 16000))[500:-500].abs().max() < 1e-4


def test_resample_removes_a_tone_above_the_new_nyquist_frequency():
    assert resample(sine(10000, 22050), 22050, 16000)[500:-500].abs().max() < 1e-2


def test_resample_lengths_and_identity():
    for length in (1, 2, 440, 441, 9819):
        assert len(resample(torch.ones(length), 22050, 16000)) == math.ceil(length * 16000 / 22050)
    audio = torch.randn(100, dtype=torch.float64)
    assert torch.equal(resample(audio, 16000, 16000), audio)
    with pytest.raises(ValueError, match="1-D"):
        resample(torch.zeros(2, 10), 22050, 16000)


# WAV files

def write_pcm(path: Path, frames: bytes, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(frames)
    return path


def wav_with_format_tag(path: Path, tag: int, width: int) -> Path:
    """A WAV file whose fmt chunk names another encoding (3 IEEE float, 7 µ-law)."""
    data = bytes(64)
    fmt = struct.pack("<HHIIHH", tag, 1, 16000, 16000 * width, width, 8 * width)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
                     + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    return path


def test_write_then_read_is_exact_for_16_bit(tmp_path):
    audio = torch.randint(-32768, 32768, (1000,)).to(torch.float64) / 32768
    write_wav(tmp_path / "a.wav", audio, 22050)
    read, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and torch.equal(read, audio)
    write_wav(tmp_path / "b.wav", audio, 22050)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_stereo_is_averaged_and_other_widths_decoded(tmp_path):
    stereo = write_pcm(tmp_path / "stereo.wav", struct.pack("<4h", 1000, 3000, -32768, 0), channels=2)
    audio, _ = read_wav(stereo)
    assert audio.tolist() == [2000 / 32768, -16384 / 32768]
    eight = write_pcm(tmp_path / "eight.wav", bytes([0, 128, 255]), width=1)
    assert read_wav(eight)[0].tolist() == [-1.0, 0.0, 127 / 128]
    packed = b"".join(value.to_bytes(3, "little", signed=True) for value in (-(2**23), 0, 2**22))
    assert read_wav(write_pcm(tmp_path / "24.wav", packed, width=3))[0].tolist() == [-1.0, 0.0, 0.5]


def test_another_sample_rate_is_read_and_resampled(tmp_path):
    write_wav(tmp_path / "slow.wav", 0.5 * sine(440, 8000), 8000)
    audio, rate = read_wav(tmp_path / "slow.wav")
    assert rate == 8000 and len(audio) == 8000
    loaded = load_audio(tmp_path / "slow.wav", 16000)
    assert len(loaded) == 16000 and (loaded - 0.5 * sine(440, 16000))[500:-500].abs().max() < 1e-3


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "float", "mu-law", "missing"])
def test_unreadable_wav_files_are_one_line_errors_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "text":
        path.write_text("not audio at all\n")
    elif kind == "empty":
        write_pcm(path, b"")
    elif kind == "truncated":
        data = write_pcm(tmp_path / "whole.wav", bytes(2000)).read_bytes()
        path.write_bytes(data[:1000])
    elif kind in ("float", "mu-law"):
        wav_with_format_tag(path, 3 if kind == "float" else 7, 4 if kind == "float" else 1)
    with pytest.raises(AudioFileError) as raised:
        read_wav(path)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message
    assert isinstance(raised.value, ValueError)


# eSpeak NG

@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("espeakng_loader")
    return espeak.engine()


def test_espeak_speaks_the_same_bytes_every_time(engine):
    first, rate = espeak.synthesize("seven", "en-US", "f3", 150, 60, 50)
    other, _ = espeak.synthesize("zero", "en", "m3", 120, 40, 50)
    again, _ = espeak.synthesize("seven", "en-US", "f3", 150, 60, 50)
    assert rate == 22050 and len(first) > 2000 and first == again and first != other
    utterances = [espeak.Utterance("seven", "en-US", "f3", 150, 60, 50), espeak.Utterance("zero", "en", "m3", 120,
                                                                                           40, 50)]
    assert list(espeak.synthesize_many(utterances, workers=2)) == [first, other]
    assert espeak.engine_version() == "1.52.0"


def test_espeak_voices_and_variants(engine):
    voices = espeak.english_voices()
    assert len(voices) == 8 and "en-Shaw" not in voices and len(espeak.voice_variants()) == 24
    spoken = {espeak.synthesize("two", "en", variant)[0] for variant in ("m1", "f2", "klatt")}
    assert len(spoken) == 3
    with pytest.raises(SpeechEngineError, match="xx-none"):
        espeak.synthesize("two", "xx-none", "m1")


def test_a_missing_espeak_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(espeak, "_engine", None)
    with pytest.raises(SpeechEngineError, match=r"pip install 'ssmlm\[audio\]'"):
        espeak.engine_version()


# the corpus

@pytest.fixture(scope="module")
def tiny_builds(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    first = build_digits_corpus(folder / "a", progress=False, workers=2, **TINY)
    second = build_digits_corpus(folder / "b", progress=False, workers=1, **TINY)
    return folder / "a", folder / "b", first, second


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_two_builds_are_byte_identical(tiny_builds):
    first, second, manifest, _ = tiny_builds
    files = files_of(first)
    assert len(files) == 13 and files == files_of(second)
    assert str(first) not in files["manifest.json"].decode()


def test_the_splits_share_no_variant_and_the_clips_are_one_second(tiny_builds):
    folder, _, manifest, _ = tiny_builds
    variants = [set(manifest["splits"][split]["variants"]) for split in ("train", "validation", "test")]
    assert all(len(chosen) == 1 for chosen in variants) and set.union(*variants) == set(TINY["variants"])
    assert {split: info["clips"] for split, info in manifest["splits"].items()} == {"train": 4, "validation": 4,
                                                                                  "test": 4}
    for name, entry in manifest["files"].items():
        assert name.split("/")[0] in ("train", "validation", "test") and entry["variant"] in name
        assert manifest["splits"][name.split("/")[0]]["variants"] == [entry["variant"]]
        audio, rate = read_wav(folder / name)
        assert rate == 16000 and len(audio) == 16000 and 0.88 < audio.abs().max() < 0.92
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["engine"]["version"] == "1.52.0" and manifest["settings"]["dither_std"] == 1e-3


def test_verify_passes_then_names_the_changed_and_the_extra_file(tiny_builds, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, data in files_of(tiny_builds[0]).items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    assert verify_digits_corpus(folder) == tiny_builds[2]
    changed = folder / next(iter(tiny_builds[2]["files"]))
    changed.write_bytes(changed.read_bytes()[:-2] + b"\0\0")
    (folder / "test" / "extra.wav").write_bytes(b"")
    with pytest.raises(ManifestMismatchError) as raised:
        verify_digits_corpus(folder)
    assert f"{changed}: sha256 is" in str(raised.value) and "extra.wav: not in the manifest" in str(raised.value)


def test_a_build_refuses_a_folder_of_other_files(engine, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CorpusDirectoryError, match="notes.txt"):
        build_digits_corpus(tmp_path, progress=False, **TINY)
    with pytest.raises(ValueError, match="at least 3 variants"):
        build_digits_corpus(tmp_path / "new", progress=False, **{**TINY, "variants": ["m1", "f2"]})
    assert not (tmp_path / "new").exists()


# the command line

def test_help_answers_without_torch():
    code = ("import sys\nfrom ssmlm.cli.build_speech_corpus import main\ncode = main(['--help'])\n"
            "print(code, 'torch' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "0 False", run.stderr
    assert "--verify" in run.stdout


def test_the_command_builds_and_verifies(engine, tiny_builds, tmp_path, capsys):
    out = tmp_path / "digits"
    tiny = ["--voices", *TINY["voices"], "--variants", *TINY["variants"], "--digits", *TINY["digits"], "--takes", "1"]
    run = subprocess.run([sys.executable, "-m", "ssmlm.cli.build_speech_corpus", "--out", str(out), *tiny],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "test" in run.stdout and "built" in run.stdout
    assert files_of(out) == files_of(tiny_builds[0])
    assert build_speech_corpus.main(["--out", str(out), "--verify"]) == 0
    (out / next(iter(tiny_builds[2]["files"]))).write_bytes(b"changed")
    assert build_speech_corpus.main(["--out", str(out), "--verify"]) == 1
    assert "sha256 is" in capsys.readouterr().err
    assert build_speech_corpus.main(["--out", str(tmp_path / "x"), "--variants", "m1", "nobody", "f2"]) == 2
    assert "nobody" in capsys.readouterr().err
