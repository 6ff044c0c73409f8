"""`ssmlm-generate-audio` (also `python -m ssmlm.cli.generate_audio`): sample audio clips from a model trained by
the audio-lm task (`ssmlm-train --config sashimi-digits-small`), unconditionally or continuing a prompt clip.

    ssmlm-generate-audio --model runs/sashimi-digits-small --out samples --num-clips 8 --seconds 1 --seed 0
    ssmlm-generate-audio --model runs/sashimi-digits-small --out samples --prompt clip.wav --prompt-seconds 0.5

OUT gets clip-00.wav, clip-01.wav, ... sorted by their log-likelihood under the model, most likely first (as the
SaShiMi paper sorts its samples); clips.json with each clip's log-likelihood (nats, and bits per sample); with a
prompt, prompt.wav (the part of the prompt clip used; each clip holds the prompt, then its continuation); and
clips.png, waveforms and spectrograms of the real clips (the prompt, and any --real files) above the generated ones
(it needs matplotlib: pip install 'ssmlm[plots]'; --no-picture skips it).

The prompt clip is read as training reads its data: 8- to 32-bit PCM WAV, channels averaged, another sample rate
resampled to 16 kHz (said once). A prompt not shorter than the windows the model was trained on (train_config.yaml
in the model folder) is refused: --prompt-seconds takes its beginning. Generating past that window is allowed (a
recurrent model has no length limit) and said once: the model has not been trained on such lengths.

Exit codes: 0 done; 2 a problem the user can fix (a wrong folder, a text model, an unreadable prompt file, an option
out of range), as one line on stderr; 74 writing failed; 130 stopped by Ctrl-C.
"""

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

from .entry import ArgumentParser, CommandError, run
from .generate import DTYPES, MAX_SEED


def build_parser(prog: str = "ssmlm-generate-audio") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Sample audio clips from a model trained on raw audio (the "
                                                   "audio-lm task), sorted by their log-likelihood.")
    parser.add_argument("--model", required=True, metavar="DIR", help="a folder written by ssmlm-train for the "
                        "audio-lm task (or by save_pretrained)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the WAV files, clips.json and clips.png "
                        "go (created if missing)")
    parser.add_argument("--num-clips", type=int, default=4, help="clips to generate (default 4)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds to generate per clip, after the prompt "
                        "(default 1.0)")
    parser.add_argument("--prompt", metavar="WAV", help="a clip to continue (default: start from silence)")
    parser.add_argument("--prompt-seconds", type=float, help="use only the first S seconds of the prompt clip")
    parser.add_argument("--real", nargs="+", default=[], metavar="WAV", help="real clips to draw beside the "
                        "generated ones in clips.png")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely codes; 0 for all "
                        "(default 0, as the paper samples)")
    parser.add_argument("--batch-size", type=int, help="clips generated at once (default: all of them)")
    parser.add_argument("--seed", type=int, help=f"random seed, for reproducible clips (0 to {MAX_SEED})")
    parser.add_argument("--no-picture", action="store_true", help="do not draw clips.png")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', ...")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype (default float32)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.num_clips < 1:
        parser.error("--num-clips must be at least 1")
    if not 0 < args.seconds < math.inf:  # also false for NaN
        parser.error(f"--seconds must be a positive number, got {args.seconds}")
    if args.prompt_seconds is not None and (args.prompt is None or not 0 < args.prompt_seconds < math.inf):
        parser.error("--prompt-seconds needs --prompt and a positive number of seconds")
    if not args.temperature > 0 or args.temperature == float("inf"):
        parser.error(f"--temperature must be a positive number, got {args.temperature}")
    if args.top_k < 0:
        parser.error("--top-k must be 0 or more")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be from 0 to {MAX_SEED}, got {args.seed}")
    if not args.no_picture and importlib.util.find_spec("matplotlib") is None:
        parser.error("clips.png needs matplotlib (pip install 'ssmlm[plots]'); or pass --no-picture")


def read_clip(path: str):
    """A WAV file as 16 kHz float64 audio, resampled where it has another rate (said once); one-line errors."""
    from ..data.speech.audio import SAMPLE_RATE, AudioFileError, read_resampled

    try:
        audio, rate = read_resampled(path, SAMPLE_RATE)
    except AudioFileError as error:
        raise CommandError(str(error)) from None
    if rate != SAMPLE_RATE:
        print(f"note: {path} is at {rate} Hz; resampled to {SAMPLE_RATE} Hz", file=sys.stderr)
    return audio


def samples_of(seconds: float, option: str) -> int:
    """Seconds as a number of 16 kHz samples, at least one."""
    from ..data.speech.audio import SAMPLE_RATE

    if (samples := round(seconds * SAMPLE_RATE)) < 1:
        raise CommandError(f"{option} {seconds} is less than one sample (1/{SAMPLE_RATE} s)")
    return samples


def prompt_codes(args: argparse.Namespace, window: int | None):
    """The prompt's µ-law codes (None without --prompt), cut to --prompt-seconds; refused past the training window."""
    from ..data.speech.audio import SAMPLE_RATE, mu_law_encode

    if args.prompt is None:
        return None
    audio = read_clip(args.prompt)
    if args.prompt_seconds is not None:
        audio = audio[: samples_of(args.prompt_seconds, "--prompt-seconds")]
    if window is not None and len(audio) >= window:
        raise CommandError(f"the prompt {args.prompt} has {len(audio):,} samples ({len(audio) / SAMPLE_RATE:.2f} s), "
                           f"not fewer than the {window:,}-sample windows the model was trained on; use "
                           f"--prompt-seconds to take its beginning")
    return mu_law_encode(audio)


def generate_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    args = parser.parse_args(argv)
    check_args(parser, args)
    import torch  # after parsing, so --help is quick

    from ..data.speech.audio import SAMPLE_RATE, write_wav
    from ..evaluation import audio_samples
    from ..tooling.saved_models import load, pick_device

    model_dir = Path(args.model)
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    _, model = load(model_dir, pick_device(args.device), dtype)
    try:
        window = audio_samples.check_audio_model(model, audio_samples.training_settings(model_dir))
    except ValueError as error:
        raise CommandError(f"{model_dir}: {error}") from None
    prompt = prompt_codes(args, window)
    real = [(f"real: {Path(path).name}", read_clip(path)) for path in args.real]
    num_samples = samples_of(args.seconds, "--seconds")
    total = num_samples + (0 if prompt is None else len(prompt))
    if window is not None and total > window:
        print(f"note: generating {total:,} samples, past the {window:,}-sample windows the model was trained on",
              file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before the work: a folder that cannot be made fails at once
    clips = audio_samples.generate_clips(model, args.num_clips, num_samples, prompt, args.temperature, args.top_k,
                                         args.seed, args.batch_size)
    if prompt is not None:
        write_wav(out / "prompt.wav", clips[0].audio()[: len(prompt)], SAMPLE_RATE)
        real.insert(0, ("real: the prompt", clips[0].audio()[: len(prompt)]))
    records = []
    for rank, clip in enumerate(clips):
        name = f"clip-{rank:02d}.wav"
        write_wav(out / name, clip.audio(), SAMPLE_RATE)
        records.append({"file": name, "log_likelihood_nats": clip.log_likelihood,
                        "bits_per_sample": clip.bits_per_sample})
        print(f"{out / name}: {clip.bits_per_sample:.3f} bits/sample")
    settings = {key: getattr(args, key) for key in ("model", "num_clips", "seconds", "prompt", "prompt_seconds",
                                                    "temperature", "top_k", "seed", "batch_size")}
    (out / "clips.json").write_text(json.dumps({"settings": settings, "clips": records}, indent=2) + "\n",
                                    encoding="utf-8")
    if not args.no_picture:
        generated = [(f"generated {rank} ({clip.bits_per_sample:.2f} bits/sample)", clip.audio())
                     for rank, clip in enumerate(clips)]
        audio_samples.write_picture(real + generated, out / "clips.png")
        print(f"{out / 'clips.png'}: waveforms and spectrograms")


def main(argv: list[str] | None = None, prog: str = "ssmlm-generate-audio") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: generate_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
