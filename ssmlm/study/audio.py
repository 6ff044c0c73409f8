"""The SaShiMi comparison (issue 30; `ssmlm-audio-study --out reports/sashimi-digits`): SaShiMi against a flat S4
stack (SaShiMi without pooling), a GSS stack and a Transformer, each of about its parameter count, on the same
spoken-digits data with the same optimizer, schedule, batch and training time on this machine; then each model's test
NLL in bits per sample against the data's unigram entropy, its training tokens/s, its generation samples/s recurrently
and by re-running the prefix every step, and whether its generations stay within real speech (no louder, how much
sounds, how noise-like) over 1 s and 4 s.

Equal training *time*, not equal steps: at one parameter count the flat stacks run every layer at the full sample
rate and take several times SaShiMi's time per step, and a CPU budget is time. (The Transformer attends over a
sliding window of 128 samples: attention over whole one-second clips is out of this CPU's reach.) Each model's step
time is measured first by a short probe run (the same settings, a few steps), and its steps are the budget over it.

Phases, each skipped when done before (an interrupted study continues; the runs folder is stamped with the
settings, and runs of other settings are refused, not reused): the probes, the training runs
(study.runner.train_and_record, the text study's runs), the generation checks (kept beside each run), and the report:
OUT/results.json, OUT/README.md, OUT/clips.png (real clips above each model's most likely generated clip),
OUT/MODEL/clip-K.wav.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.speech.audio import SAMPLE_RATE, load_audio, write_wav
from ..evaluation import audio_samples
from ..model.modeling import SSMLMForCausalLM
from ..training import load_config
from ..training.audio_task import audio_files
from .records import RUN_RECORD, claim_runs_folder, read_json, write_json
from .runner import train_and_record

MODELS = {  # name in the report: the shipped config
    "sashimi": "sashimi-digits-small",
    "flat-s4": "s4-digits-small",
    "gss": "gss-digits-small",
    "transformer": "transformer-digits-small",
}
POOLED, FLAT = "sashimi", "flat-s4"
STAMP = "audio-study.json"  # in the runs folder: the settings its runs were trained with


@dataclass
class AudioStudySettings:
    minutes: float = 8.0  # training time per model
    probe_steps: int = 4  # the probe run's steps: the step time is from their median tokens/s
    clips: int = 2  # generated clips per model for the stability check
    clip_seconds: tuple[float, ...] = (1.0, 4.0)  # the spans the stability check reads; the clips are the longest
    reconvolving_samples: int = 2000  # generation speed is timed over a clip this long, both ways
    real_clips: int = 8  # test clips whose loudness the generated clips are held to
    run_settings: tuple[str, ...] = ("output.tracker=null", "output.log_every=10", "training.eval_blocks=32")
    seed: int = 0


QUICK = AudioStudySettings(minutes=0.0, probe_steps=3, clips=2, clip_seconds=(0.04, 0.08), reconvolving_samples=16,
                           real_clips=2, run_settings=("output.tracker=null", "output.log_every=1",
                                                       "training.eval_blocks=2", "training.batch_size=2",
                                                       "data.seq_len=256", "data.num_proc=1", "model.hidden_size=16",
                                                       "model.intermediate_size=32"))


class AudioStudy:
    def __init__(self, out: Path, runs: Path, data: Path | None = None,
                 settings: AudioStudySettings = AudioStudySettings(), log=print):
        self.out, self.runs, self.data, self.settings, self.log = Path(out), Path(runs), data, settings, log

    def data_settings(self) -> list[str]:
        """Every source of the configs read from DATA/{train,validation,test} instead (a folder of WAV files)."""
        if self.data is None:
            return []
        return ["data.build_corpus=null", *(f"data.sources.digits.{split}={self.data / split}"
                                            for split in ("train", "validation", "test"))]

    def settings_of(self, *more: str) -> list[str]:
        return [*self.settings.run_settings, *self.data_settings(), f"training.seed={self.settings.seed}", *more]

    def step_seconds(self, name: str) -> float:
        """Seconds per training step: the median of a short probe run's steps (no test split)."""
        path = self.runs / "probes" / name / RUN_RECORD
        if (record := read_json(path)) is None:
            steps = self.settings.probe_steps
            record = train_and_record(MODELS[name], self.settings_of(
                f"training.max_steps={steps}", "training.warmup_steps=1", f"training.eval_every={steps}",
                f"output.save_every={steps}", "output.log_every=1", "data.sources.digits.test=null"), path.parent,
                self.log)
        config = load_config(MODELS[name], self.settings_of())
        return config.training.batch_size * config.data.seq_len / record["train_tokens_per_second"]

    def train(self, name: str) -> dict:
        seconds = self.step_seconds(name)
        steps = max(2, round(self.settings.minutes * 60 / seconds))
        self.log(f"{name}: {seconds:.2f} s a step here: {steps} steps")
        return train_and_record(MODELS[name], self.settings_of(
            f"training.max_steps={steps}", f"training.warmup_steps={max(1, steps // 20)}",
            f"training.eval_every={max(1, steps // 4)}", f"output.save_every={steps}", "output.keep_checkpoints=1"),
            self.runs / name, self.log)

    def real_clips(self) -> list[torch.Tensor]:
        config = load_config(MODELS[POOLED], self.settings_of())
        files = audio_files(config.data.sources["digits"].test, "data.sources.digits.test")
        return [load_audio(path, SAMPLE_RATE) for path in files[:: max(1, len(files) // self.settings.real_clips)]
                ][: self.settings.real_clips]

    def generation(self, name: str, real: list[torch.Tensor]) -> dict:
        """Speed both ways, and `clips` clips of the longest span, their loudness against the real clips' (kept beside
        the run: RUNS/NAME/generated/)."""
        path = self.runs / name / "generated" / "generation.json"
        if (result := read_json(path)) is not None:
            return result
        model = SSMLMForCausalLM.from_pretrained(self.runs / name, dtype=torch.float32).eval()
        speed = audio_samples.generation_speed(model, self.settings.reconvolving_samples, self.settings.seed)
        samples = round(max(self.settings.clip_seconds) * SAMPLE_RATE)
        clips = audio_samples.generate_clips(model, self.settings.clips, samples, seed=self.settings.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        for rank, clip in enumerate(clips):
            write_wav(path.parent / f"clip-{rank}.wav", clip.audio(), SAMPLE_RATE)
        result = {
            "speed": speed,
            "clips": [{"file": f"clip-{rank}.wav", "bits_per_sample": clip.bits_per_sample}
                      for rank, clip in enumerate(clips)],
            "stability": audio_samples.stability([clip.audio() for clip in clips], real,
                                                 list(self.settings.clip_seconds)),
        }
        write_json(path, result)
        return result

    def run(self) -> dict:
        claim_runs_folder(self.runs, {"settings": vars(self.settings), "data": str(self.data)}, STAMP)
        runs = {name: self.train(name) for name in MODELS}
        real = self.real_clips()
        generation = {name: self.generation(name, real) for name in MODELS if runs[name]["status"] == "ok"}
        results = {"settings": {**vars(self.settings), "models": MODELS}, "runs": runs, "generation": generation}
        for name, result in generation.items():
            (self.out / name).mkdir(parents=True, exist_ok=True)
            for clip in result["clips"]:
                shutil.copyfile(self.runs / name / "generated" / clip["file"], self.out / name / clip["file"])
        write_json(self.out / "results.json", results)
        (self.out / "README.md").write_text(report(results), encoding="utf-8")
        pictured = [(f"real test clip {index}", clip) for index, clip in enumerate(real[:2])]
        pictured += [(f"{name}: most likely of {len(result['clips'])} generated",
                      load_audio(self.out / name / "clip-0.wav", SAMPLE_RATE)) for name, result in generation.items()]
        audio_samples.write_picture(pictured, self.out / "clips.png")
        return results


def report(results: dict) -> str:
    """README.md of the comparison: the settings, two tables, and what they show, each sentence from the numbers."""
    runs, generation, settings = results["runs"], results["generation"], results["settings"]
    floor = next((run["data"]["unigram_bits"] for run in runs.values() if run["status"] == "ok"), math.nan)
    samples = settings["reconvolving_samples"]
    lines = [
        "# SaShiMi against a flat S4 stack, a GSS stack and a Transformer, on spoken digits",
        "",
        f"Written by `ssmlm-audio-study` (ssmlm/study/audio.py); every number below is in `results.json`. The models "
        f"are the shipped configs {', '.join(f'`{config}`' for config in settings['models'].values())}, trained on "
        f"the same data (the spoken-digits corpus, test voices unheard) with the same optimizer, schedule and batch, "
        f"each for about {settings['minutes']:g} minutes on this machine (steps = the budget over its step time "
        f"in a short probe; `seconds` is the whole run, data loading, validation and the test pass included). "
        f"NLL is in bits per sample on the whole test split; the unigram entropy of the training data's µ-law codes, "
        f"the floor a model must beat to have learned anything beyond the codes' frequencies, is {floor:.3f} bits. "
        f"Generation speed is one clip of {samples:,} samples, recurrently and by re-running the whole prefix each "
        f"step.",
        "",
        "| model | parameters | steps | seconds | training tokens/s | test bits/sample | recurrent samples/s | "
        "re-running samples/s | speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        if run["status"] != "ok":
            lines.append(f"| {name} | | {run['steps']:,} | | | {run['status']} | | | |")
            continue
        speed = generation[name]["speed"]
        lines.append(f"| {name} | {run['parameters']:,} | {run['steps']:,} | {run['seconds']:,.0f} | "
                     f"{run['train_tokens_per_second']:,.0f} | "
                     f"{run['test']['bits_per_sample']:.3f} | {speed['recurrent_samples_per_s']:,.0f} | "
                     f"{speed['reconvolving_samples_per_s']:,.0f} | {speed['speedup']:.1f}x |")
    spans = " / ".join(f"{seconds:g} s" for seconds in settings["clip_seconds"])
    window_seconds = next(iter(generation.values()))["stability"]["window_seconds"] if generation else 0
    lines += [
        "",
        f"Long generations ({settings['clips']} clips a model, from silence, temperature 1), over their first {spans}: "
        f"the loudest {window_seconds:g} s window's RMS (a blow-up would pass the real clips'), the share of windows "
        f"that sound (RMS at least {audio_samples.SOUNDING_FRACTION:g} of the loudest real window's), and the median "
        f"spectral flatness of the frames that sound (near 0 for voiced speech, about 0.56 for white noise), against "
        f"{settings['real_clips']} real test clips.",
        "",
        f"| clips | loudest RMS ({spans}) | sounding share ({spans}) | flatness ({spans}) | at the extreme codes "
        f"({spans}) | no blow-up |",
        "|---|---|---|---|---|---|",
    ]
    real = next(iter(generation.values()))["stability"]["real"] if generation else None
    if real:
        lines.append(f"| real test clips | {real['loudest_rms']:.3f} | {real['sounding_share']:.2f} | "
                     f"{per_span([real], 'flatness', '{:.3f}')} | {real['extreme_share']:.2%} | |")
    for name, result in generation.items():
        spans_of = result["stability"]["spans"]
        lines.append(f"| {name} | {per_span(spans_of, 'loudest_rms', '{:.3f}')} | "
                     f"{per_span(spans_of, 'sounding_share', '{:.2f}')} | {per_span(spans_of, 'flatness', '{:.3f}')} | "
                     f"{per_span(spans_of, 'extreme_share', '{:.2%}')} | "
                     f"{'yes' if all(span['stable'] for span in spans_of) else 'no'} |")
    lines += ["", "## What it shows", ""] + findings(results, floor)
    return "\n".join(lines) + "\n"


def per_span(spans: list[dict], key: str, form: str) -> str:
    return " / ".join("n/a" if span[key] is None else form.format(span[key]) for span in spans)


def findings(results: dict, floor: float) -> list[str]:
    runs, generation, settings = results["runs"], results["generation"], results["settings"]
    done = {name: run for name, run in runs.items() if run["status"] == "ok"}
    bits = {name: run["test"]["bits_per_sample"] for name, run in done.items()}
    lines = [f"- Below the unigram floor ({floor:.3f} bits): "
             + ", ".join(f"{name} {'yes' if value < floor else 'no'} ({value:.3f})" for name, value in bits.items())
             + "."]
    if POOLED in done and FLAT in done and POOLED in generation and FLAT in generation:
        training = done[POOLED]["train_tokens_per_second"] / done[FLAT]["train_tokens_per_second"]
        sampling = (generation[POOLED]["speed"]["recurrent_samples_per_s"]
                    / generation[FLAT]["speed"]["recurrent_samples_per_s"])
        lines.append(f"- Pooling and NLL: in the same training time SaShiMi's test NLL is {bits[POOLED]:.3f} bits, the "
                     f"flat S4 stack's {bits[FLAT]:.3f}: pooling "
                     f"{'helps' if bits[POOLED] < bits[FLAT] else 'does not help'} here.")
        lines.append(f"- Pooling and speed: SaShiMi trains at {training:.1f}x the flat stack's tokens/s (so "
                     f"{done[POOLED]['steps']:,} steps to its {done[FLAT]['steps']:,} in the same time) and generates "
                     f"at {sampling:.1f}x its samples/s.")
    samples = settings["reconvolving_samples"]
    for name, result in generation.items():
        speed, stability = result["speed"], result["stability"]
        longest = stability["spans"][-1]
        blow_up = "no window louder than the loudest real one" if all(
            span["stable"] for span in stability["spans"]) else "louder than the loudest real clip"
        noise = "" if longest["flatness"] is None or stability["real"]["flatness"] is None else (
            f"; what sounds has a spectral flatness of {longest['flatness']:.3f}, real speech "
            f"{stability['real']['flatness']:.3f} (white noise about 0.56)")
        lines.append(f"- {name}: recurrent generation runs at {speed['speedup']:.1f}x the speed of re-running the "
                     f"prefix each step over {samples:,} samples ({'the same' if speed['same_codes'] else 'different'} "
                     f"codes from the same seed). Over {longest['seconds']:g} s: {blow_up}; "
                     f"{longest['sounding_share']:.0%} of the windows sound (real clips: "
                     f"{stability['real']['sounding_share']:.0%}){noise}.")
    return lines
