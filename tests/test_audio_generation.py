"""Audio from a trained audio-lm model (ssmlm/evaluation/audio_samples.py, ssmlm-generate-audio) and the SaShiMi
comparison (ssmlm-audio-study --quick): clips written as WAV and sorted by a log-likelihood that the convolutional
pass and the recurrent steps agree on; continuations that start with the prompt; recurrent generation equal to
re-running the prefix; the stability check, which flags a runaway clip; the bad inputs, as one line each."""

import json
import math
from pathlib import Path

import pytest
import torch
from audio_data import audio_config, clip, write_clips
from runs import run_in_process

from ssmlm.cli import audio_study, generate_audio
from ssmlm.data.speech import SAMPLE_RATE, SILENCE, mu_law_decode, mu_law_encode, read_wav, resample, write_wav
from ssmlm.evaluation import audio_samples
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny SaShiMi trained for three steps on tones (windows of 400 samples)."""
    root = tmp_path_factory.mktemp("audio-model")
    train = write_clips(root / "train", [400, 800, 400, 400])
    validation = write_clips(root / "validation", [400], seed=10)
    run_in_process(audio_config(root, train, validation))
    return root / "run"


def test_clips_are_written_sorted_by_a_log_likelihood_the_steps_agree_on(model_dir, tmp_path, capsys):
    out = tmp_path / "clips"
    assert generate_audio.main(["--model", str(model_dir), "--out", str(out), "--num-clips", "3", "--seconds",
                                "0.02", "--seed", "0", "--batch-size", "2"]) == 0
    listing = json.loads((out / "clips.json").read_text())
    likelihoods = [record["log_likelihood_nats"] for record in listing["clips"]]
    assert likelihoods == sorted(likelihoods, reverse=True) and len(likelihoods) == 3
    for record in listing["clips"]:
        audio, rate = read_wav(out / record["file"])
        assert rate == SAMPLE_RATE and len(audio) == 320
        assert record["bits_per_sample"] == pytest.approx(-record["log_likelihood_nats"] / math.log(2) / 320)
    assert (out / "clips.png").stat().st_size > 0 and not (out / "prompt.wav").exists()

    # The log-likelihood of the convolutional pass is the sum of the recurrent steps' log-probabilities (generate()
    # hands out its logits in float32, hence the tolerance: 50 steps of float32 rounding).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    torch.manual_seed(1)
    output = model.generate(torch.tensor([[SILENCE]]), do_sample=True, top_k=0, max_new_tokens=50,
                            output_logits=True, return_dict_in_generate=True)
    codes = output.sequences[0, 1:]
    stepped = sum(torch.log_softmax(logits[0], -1)[code].item() for logits, code in zip(output.logits, codes))
    assert audio_samples.log_likelihoods(model, torch.empty(0), codes[None])[0] == pytest.approx(stepped, abs=1e-4)


def test_a_continuation_holds_the_prompt_then_its_continuation(model_dir, tmp_path, capsys):
    prompt = clip(4000, 3)  # 0.5 s at 8 kHz: resampled to 16 kHz, said once
    write_wav(tmp_path / "prompt.wav", prompt, 8000)
    out = tmp_path / "clips"
    assert generate_audio.main(["--model", str(model_dir), "--out", str(out), "--num-clips", "2", "--seconds",
                                "0.01", "--prompt", str(tmp_path / "prompt.wav"), "--prompt-seconds", "0.01",
                                "--seed", "0", "--no-picture"]) == 0
    err = capsys.readouterr().err
    assert "resampled to 16000 Hz" in err and "past the 400-sample windows" not in err
    heard, _ = read_wav(tmp_path / "prompt.wav")
    expected = mu_law_decode(mu_law_encode(resample(heard, 8000, SAMPLE_RATE)[:160]))
    for name in ("prompt.wav", "clip-00.wav", "clip-01.wav"):
        audio, _ = read_wav(out / name)
        assert len(audio) == (160 if name == "prompt.wav" else 320)
        assert torch.allclose(audio[:160], expected, atol=2 / 32768)
    assert not (out / "clips.png").exists()


def test_recurrent_generation_equals_rerunning_the_prefix_and_the_stability_check_can_fail(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    speed = audio_samples.generation_speed(model, 40, seed=3)
    assert speed["same_codes"] and speed["samples"] == 40 and speed["speedup"] > 0

    real = [0.1 * torch.sin(torch.arange(8000, dtype=torch.float64) / 5)]
    quiet = 0.05 * torch.sin(torch.arange(16000, dtype=torch.float64) / 7)
    runaway = torch.cat([quiet[:8000], torch.ones(8000)])  # loud from 0.5 s on
    report = audio_samples.stability([quiet, quiet], real, [0.5, 1.0])
    assert [span["stable"] for span in report["spans"]] == [True, True]
    assert report["spans"][1]["sounding_share"] == 1 and report["spans"][1]["flatness"] < 1e-3
    report = audio_samples.stability([quiet, runaway], real, [0.5, 1.0])
    assert [span["stable"] for span in report["spans"]] == [True, False]
    assert report["spans"][1]["extreme_share"] == pytest.approx(0.25)
    # Noise as loud as the real clip: no blow-up, but about as flat as white noise, where the tone is not.
    noise = 0.05 * torch.randn(16000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = audio_samples.stability([noise, torch.zeros(16000)], real, [1.0])
    assert report["spans"][0]["stable"] and report["spans"][0]["sounding_share"] == 0.5
    assert report["spans"][0]["flatness"] == pytest.approx(0.56, abs=0.05) and report["real"]["flatness"] < 1e-3


def test_bad_inputs_are_one_line_errors(model_dir, tiny_model_dir, tmp_path, capsys):
    base = ["--model", str(model_dir), "--out", str(tmp_path / "out"), "--no-picture"]
    write_wav(tmp_path / "long.wav", clip(400, 1), SAMPLE_RATE)  # as long as the training windows
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVE")
    write_wav(tmp_path / "odd-rate.wav", clip(400, 1), 16001)  # a ratio of rates no filter bank here takes
    cases = [
        (["--prompt", str(tmp_path / "long.wav")], "not fewer than the 400-sample windows the model was trained on; "
                                                   "use --prompt-seconds"),
        (["--prompt", str(tmp_path / "broken.wav")], "broken.wav"),
        (["--prompt", str(tmp_path / "odd-rate.wav")], "odd-rate.wav: cannot resample 16001 Hz"),
        (["--real", str(tmp_path / "broken.wav")], "broken.wav"),
        (["--seconds", "0.00001"], "--seconds 1e-05 is less than one sample (1/16000 s)"),
        (["--seconds", "nan"], "--seconds must be a positive number"),
        (["--prompt-seconds", "0.1"], "--prompt-seconds needs --prompt"),
        (["--seconds", "0"], "--seconds must be a positive number"),
        (["--num-clips", "0"], "--num-clips must be at least 1"),
    ]
    for arguments, message in cases:
        assert generate_audio.main(base + arguments) == 2, arguments
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ssmlm-generate-audio: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()

    # A text model, by its vocabulary; and one of 256 tokens by the task its training config names.
    assert generate_audio.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--no-picture"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("ssmlm-generate-audio: error: ") and "not an audio model: its vocabulary has" in line
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="not an audio model: it was trained by the causal-lm task, not audio-lm"):
        audio_samples.check_audio_model(model, {"task": "causal-lm"})
    assert audio_samples.check_audio_model(model, audio_samples.training_settings(model_dir)) == 400
    assert audio_samples.check_audio_model(model, audio_samples.training_settings(tmp_path)) is None

    # Past the training window: allowed, and said; a clip shorter than one spectrogram frame is still drawn.
    assert generate_audio.main(["--model", str(model_dir), "--out", str(tmp_path / "out"), "--seconds", "0.03",
                                "--num-clips", "1"]) == 0
    assert "generating 480 samples, past the 400-sample windows" in capsys.readouterr().err
    assert generate_audio.main(["--model", str(model_dir), "--out", str(tmp_path / "short"), "--seconds", "0.005",
                                "--num-clips", "1"]) == 0
    assert (tmp_path / "short" / "clips.png").stat().st_size > 0


def test_the_audio_study_runs_end_to_end_quick(tmp_path, capsys):
    data = tmp_path / "data"
    write_clips(data / "train", [400] * 4)
    write_clips(data / "validation", [400], seed=10)
    write_clips(data / "test", [400, 400], seed=20)
    out = tmp_path / "report"
    assert audio_study.main(["--out", str(out), "--data", str(data), "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["sashimi", "flat-s4", "gss", "transformer"]
    for name, run in results["runs"].items():
        assert run["status"] == "ok" and run["test"]["samples"] == 800 and run["data"]["unigram_bits"] > 0
        generation = results["generation"][name]
        assert generation["speed"]["same_codes"], name
        assert len(generation["stability"]["spans"]) == 2 and (out / name / "clip-0.wav").exists()
        assert (out / "runs" / name / "generated" / "generation.json").exists()
    readme = (out / "README.md").read_text()
    assert "| sashimi |" in readme and "| flat-s4 |" in readme and "| gss |" in readme and "| transformer |" in readme
    assert "Pooling and NLL" in readme and (out / "clips.png").stat().st_size > 0
    # Done before: a second call trains nothing; other settings are refused, not served the quick runs.
    capsys.readouterr()
    assert audio_study.main(["--out", str(out), "--data", str(data), "--quick"]) == 0
    assert "training" not in capsys.readouterr().err
    assert audio_study.main(["--out", str(out), "--data", str(data), "--minutes", "1"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"ssmlm-audio-study: error: {out / 'runs'} holds runs of other settings (") and "minutes" in line
