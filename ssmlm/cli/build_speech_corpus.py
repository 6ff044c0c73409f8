"""Build the spoken-digits corpus ("zero".."nine" by eSpeak NG, 1-second 16 kHz clips, split by voice variant) for
the raw-audio models, or verify a build.

    ssmlm-build-speech-corpus --out data/speech-digits [--seed 0] [--takes 2]
    ssmlm-build-speech-corpus --out data/speech-digits --verify

(also `python -m ssmlm.cli.build_speech_corpus`). It needs eSpeak NG from PyPI: pip install 'ssmlm[audio]'.

--voices, --variants and --digits build a part of it (a smaller corpus, or a quick check). See
ssmlm/data/speech/digits.py for the clips, the split rule and the output layout.

Exit codes: 0 built, or verified; 1 --verify found files that differ from the manifest (listed); 2 a problem with the
options (an --out that holds other files, an unknown voice, ...) or eSpeak NG not installed; 74 writing failed (a
full disk, ...); 130 stopped by Ctrl-C.
"""

import argparse
import sys
import time

from .entry import CHECK_FAILED, ArgumentParser, CommandError, run

SPLITS = ("train", "validation", "test")


def format_table(manifest: dict) -> str:
    """Counts per split: variants, speakers, clips, and the clips of each digit."""
    digits = manifest["settings"]["digits"]
    rows = [("split", "variants", "speakers", "clips", *digits)]
    for split in SPLITS:
        info = manifest["splits"][split]
        rows.append((split, str(len(info["variants"])), str(info["speakers"]), f"{info['clips']:,}",
                     *(str(info["per_digit"][digit]) for digit in digits)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join([row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:]))])
             for row in rows]
    for split in SPLITS:
        lines.append(f"{split} variants: {' '.join(manifest['splits'][split]['variants'])}")
    engine = manifest["engine"]
    lines.append(f"eSpeak NG {engine['version']} ({engine['package']} {engine['package_version']}); "
                 f"{manifest['clips_cut_to_clip_samples']} clip(s) cut to 1 s")
    return "\n".join(lines)


def build_parser(prog: str = "ssmlm-build-speech-corpus") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=f"Build the spoken-digits corpus (eSpeak NG, 1 s clips at 16 kHz, "
                                                   f"split by voice variant), or verify a build.\n\n"
                                                   f"    {prog} --out data/speech-digits [--seed 0]\n"
                                                   f"    {prog} --out data/speech-digits --verify",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True,
                        help="output directory (OUT/{train,validation,test}/*.wav, OUT/manifest.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of every clip's settings")
    parser.add_argument("--takes", type=int, default=2, help="renditions of each digit by each speaker (default 2)")
    parser.add_argument("--voices", nargs="+", metavar="VOICE", help="English voices to use (default all eight)")
    parser.add_argument("--variants", nargs="+", metavar="VARIANT",
                        help="voice variants to use, at least three (default all 24)")
    parser.add_argument("--digits", nargs="+", metavar="DIGIT", help="digits to say, as words (default all ten)")
    parser.add_argument("--workers", type=int, default=None, help="processes that speak at once (default: the CPUs)")
    parser.add_argument("--verify", action="store_true", help="re-hash an existing build against its manifest")
    return parser


def build_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if args.takes < 1 or (args.workers is not None and args.workers < 1):
        raise CommandError("--takes and --workers must be at least 1")
    from ..data.speech import digits, espeak  # torch: after --help and the option checks

    start = time.perf_counter()
    if args.verify:
        try:
            manifest = digits.verify_digits_corpus(args.out)
        except digits.ManifestMismatchError as error:
            print(error, file=sys.stderr)  # one line per file that differs
            return CHECK_FAILED
        print(format_table(manifest))
        print(f"{args.out}: every file matches its manifest ({time.perf_counter() - start:.1f} s)")
        return 0
    try:
        manifest = digits.build_digits_corpus(args.out, seed=args.seed, voices=args.voices, variants=args.variants,
                                              takes=args.takes, digits=args.digits or digits.DIGITS,
                                              workers=args.workers)
    except (espeak.SpeechEngineError, digits.CorpusDirectoryError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(format_table(manifest))
    print(f"built {args.out}: {sum(info['clips'] for info in manifest['splits'].values()):,} clips in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None, prog: str = "ssmlm-build-speech-corpus") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: build_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
