"""`ssmlm-audio-study` (also `python -m ssmlm.cli.audio_study`): SaShiMi against a flat S4 stack, a GSS stack and a
Transformer of about its parameter count on the spoken-digits corpus, the same training time each; test NLL,
training and generation speed, and the stability of long generations (ssmlm/study/audio.py says how).

    ssmlm-audio-study --out reports/sashimi-digits                      # about 8 minutes of training per model
    ssmlm-audio-study --out /tmp/audio-study --data DIR --quick         # end to end at a tiny size

The runs go to --runs (default OUT/runs); a run or a model's generation check done before is not done again, so the
same command continues a study that was stopped; a runs folder of other settings (--quick, --minutes, --data) is
refused rather than reused.

Exit codes: 0 done (a run that diverged is a result, in the report); 2 a problem with the options, a config or the
data; 74 writing failed; 130 stopped by Ctrl-C or SIGTERM (a run stopped midway keeps a checkpoint).
"""

import argparse
import sys
from importlib.util import find_spec
from pathlib import Path

from .entry import ArgumentParser, CommandError, run
from .study import run_to_a_stop


def build_parser(prog: str = "ssmlm-audio-study") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description="SaShiMi against a flat S4 stack, a GSS stack and a "
                                                   "Transformer on spoken digits: NLL, speed, and the stability of "
                                                   "long generations.")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the report, its clips and picture go")
    parser.add_argument("--runs", metavar="DIR", help="where the training runs go (default OUT/runs)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time per model (default 8)")
    parser.add_argument("--data", metavar="DIR", help="train on DIR/{train,validation,test} (folders of WAV files) "
                        "instead of the spoken-digits corpus the configs build")
    parser.add_argument("--quick", action="store_true", help="every phase at a tiny size (the test suite's)")
    return parser


def study_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    if find_spec("matplotlib") is None:
        raise CommandError("the report's picture needs matplotlib: pip install 'ssmlm[plots]'")

    from ..study.audio import QUICK, AudioStudy, AudioStudySettings  # torch: after --help

    settings = QUICK if args.quick else AudioStudySettings(minutes=args.minutes)
    out = Path(args.out)
    study = AudioStudy(out, Path(args.runs) if args.runs else out / "runs", Path(args.data) if args.data else None,
                       settings, log=lambda text: print(f"{parser.prog}: {text}", file=sys.stderr, flush=True))
    if (stopped := run_to_a_stop(parser.prog, study.run)) is not None:
        return stopped
    print(f"{args.out}/README.md written")
    return 0


def main(argv: list[str] | None = None, prog: str = "ssmlm-audio-study") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: study_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
