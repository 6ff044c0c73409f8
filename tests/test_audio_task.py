"""The audio-lm task (ssmlm/training/audio_task.py) on hand-written WAV files: a tiny SaShiMi run that trains,
scores validation and test in bits per sample beside the unigram floor, and saves a model that loads and generates;
the data rules (unreadable files skipped and named, other rates resampled, stereo averaged, short clips padded and
not scored, empty splits refused, the µ-law rows cached); and the refused tokenizer.path."""

import math
import os
import wave
from pathlib import Path

import pytest
import torch
from audio_data import audio_config, clip, write_clips
from invariants import decode_by_full_reforward
from runs import records, reset_accelerate, run_in_process, tiny_config_values

from ssmlm.data.speech import mu_law_encode, resample, write_wav
from ssmlm.training.audio_task import SILENCE, audio_tokenizer, pairs
from ssmlm.training.config import ConfigError, config_from_dict
from ssmlm.training.tasks import TASKS
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def write_stereo_wav(path: Path, left: torch.Tensor, right: torch.Tensor, rate: int) -> None:
    frames = torch.stack([left, right], dim=1).flatten()
    with wave.open(str(path), "wb") as file:
        file.setnchannels(2)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(torch.round(frames * 32767).to(torch.int16).numpy().astype("<i2").tobytes())


def prepare(values: dict):
    try:
        return TASKS["audio-lm"].prepare_data(config_from_dict(values))
    finally:
        reset_accelerate()


def test_a_tiny_sashimi_trains_scores_in_bits_and_generates_from_its_saved_files(tmp_path):
    train = write_clips(tmp_path / "train", [400, 800, 400, 400, 1200, 400])
    validation = write_clips(tmp_path / "validation", [400, 250], seed=10)  # 250: padded, 150 samples not scored
    test = write_clips(tmp_path / "test", [400, 400], seed=20)
    final = run_in_process(audio_config(tmp_path, train, validation, test))

    assert final["val/samples"] == 650 and final["test/samples"] == 800
    for key in ("val/bits_per_sample", "test/bits_per_sample", "data/unigram_bits"):
        assert math.isfinite(final[key]), key
    assert 0 < final["data/unigram_bits"] <= 8
    assert final["val/bits_per_sample"] == pytest.approx(final["val/loss"] / math.log(2))
    logged = [record for record in records(tmp_path / "run") if "val/loss" in record]
    assert [record["step"] for record in logged] == [0, 3] and "test/bits_per_sample" in logged[-1]

    # The saved files: the 256-code tokenizer without padding, a model that generates step by step exactly what
    # re-running the whole prefix gives.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert len(tokenizer) == 256 and tokenizer.pad_token_id is None and tokenizer.bos_token_id == SILENCE
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run").double().eval()
    assert model.config.pad_token_id is None and model.model.embed_tokens.padding_idx is None
    start = torch.tensor([[SILENCE]])
    generated = model.generate(start, max_new_tokens=20, do_sample=False)
    assert torch.equal(generated, decode_by_full_reforward(model, start, 20))
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    assert f"| test | clips | {final['test/clips/bits_per_sample']:.3f} | 800 |" in card and "mu_law_decode" in card
    assert "pipeline_tag" not in card.split("---")[1]


def test_unreadable_files_are_skipped_other_rates_resampled_stereo_averaged_short_clips_padded(tmp_path, capsys):
    train = write_clips(tmp_path / "train", [400, 400])
    (train / "notes.wav").write_text("not a WAV file")
    left, right = clip(441, 1), clip(441, 2)
    write_stereo_wav(train / "stereo.wav", left, right, 44100)
    write_clips(tmp_path / "short", [100], seed=5)
    os.replace(tmp_path / "short" / "clip0.wav", train / "short.wav")
    validation = write_clips(tmp_path / "validation", [400])
    capsys.readouterr()
    data = prepare(audio_config(tmp_path, train, validation))
    err = capsys.readouterr().err
    (skipped,) = [line for line in err.splitlines() if "skipped" in line]
    assert skipped.startswith("warning: data.sources.clips.train: 1 file(s) skipped") and "notes.wav" in skipped
    assert "data.sources.clips.train: 1 file(s) resampled to 16000 Hz (from 44100 Hz)" in err
    assert "data.sources.clips.train: 2 window(s) shorter than data.seq_len=400 samples padded" in err

    # Files in name order: clip0, clip1, short, stereo (notes skipped).
    rows = data.train[:]
    assert rows["scored"].tolist() == [400, 400, 100, 160]
    averaged = resample((torch.round(torch.stack([left, right], dim=1) * 32767) / 32768).mean(1), 44100, 16000)
    assert torch.equal(rows["codes"][3, :160], mu_law_encode(averaged))
    assert (rows["codes"][2, 100:] == SILENCE).all() and (rows["codes"][3, 160:] == SILENCE).all()

    # The padded samples are not scored: -100 targets, and a loss of 0 there.
    inputs, targets = pairs({"codes": rows["codes"][2:], "scored": rows["scored"][2:]})
    assert inputs[0, 0] == SILENCE and torch.equal(inputs[0, 1:], rows["codes"][2, :-1])
    assert (targets != -100).sum(1).tolist() == [100, 160]
    model = TASKS["audio-lm"].build_model(config_from_dict(audio_config(tmp_path, train, validation)), data.tokenizer)
    with torch.no_grad():
        losses = model(input_ids=inputs, shift_labels=targets, return_logits=False, loss_per_position=True).loss
    assert (losses[0, 100:] == 0).all() and (losses[0, :100] > 0).all()


def test_a_silent_file_is_data_like_any_other(tmp_path):
    train = write_clips(tmp_path / "train", [400])
    write_wav(train / "silent.wav", torch.zeros(400, dtype=torch.float64), 16000)
    rows = prepare(audio_config(tmp_path, train, train)).train[:]
    assert rows["scored"].tolist() == [400, 400] and (rows["codes"][1] == SILENCE).all()


def test_the_mu_law_rows_are_cached_and_a_second_run_does_not_read_the_files(tmp_path):
    train = write_clips(tmp_path / "train", [400, 400])
    validation = write_clips(tmp_path / "validation", [400])
    first = prepare(audio_config(tmp_path, train, validation)).train[:]["codes"]
    # Other samples of the same size and modification time: a second run that read the files would see them.
    path = train / "clip0.wav"
    stat = path.stat()
    write_wav(path, clip(400, 99), 16000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert torch.equal(prepare(audio_config(tmp_path, train, validation)).train[:]["codes"], first)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: read again
    assert not torch.equal(prepare(audio_config(tmp_path, train, validation)).train[:]["codes"], first)


def test_an_empty_split_and_a_tokenizer_path_are_refused_by_key(tmp_path):
    train = write_clips(tmp_path / "train", [400])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"^data\.sources\.clips\.validation: no \.wav file in "):
        prepare(audio_config(tmp_path, train, empty))
    (empty / "broken.wav").write_bytes(b"RIFF")
    with pytest.raises(ConfigError, match=r"^data\.sources\.clips\.validation: no readable WAV file in "):
        prepare(audio_config(tmp_path, train, empty))
    with pytest.raises(ConfigError, match=r"^data\.sources\.clips\.test: no such WAV file or folder: "):
        prepare(audio_config(tmp_path, train, train, test=tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^tokenizer\.path: the audio-lm task's vocabulary is the 256 µ-law"):
        prepare(audio_config(tmp_path, train, train, tokenizer={"path": str(tmp_path)}))


def test_a_test_split_is_refused_for_the_text_tasks(corpus, tmp_path):
    values = tiny_config_values(corpus, tmp_path / "cache", tmp_path / "run")
    values["data"]["sources"]["books"]["test"] = values["data"]["sources"]["books"]["validation"]
    with pytest.raises(ConfigError, match=r"^data\.sources\.books\.test: only the audio-lm task scores a test split "
                                          r"\(task: causal-lm\)"):
        TASKS["causal-lm"].prepare_data(config_from_dict(values))


def test_the_tokenizer_is_the_256_codes():
    tokenizer = audio_tokenizer()
    assert len(tokenizer) == 256 and (tokenizer.pad_token_id, tokenizer.eos_token_id) == (None, None)
    assert tokenizer("0 128 255")["input_ids"] == [0, 128, 255]
