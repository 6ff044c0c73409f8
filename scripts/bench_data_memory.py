#!/usr/bin/env python
"""Peak memory of `train.py` preparing and training on one large `.txt` document, against a small one in the same run:
memory must be bounded by the batch, not the document.

    python scripts/bench_data_memory.py --sizes-mb 2 200 --out reports/benchmarks/bench-data-memory.json

For each size a `.txt` file of that many megabytes is written from the real text excerpts in tests/fixtures/text
(repeated, each copy numbered), and `train.py` runs on it in a fresh data cache: tokenizer training (on
`--tokenizer-chars` characters), tokenizing and packing the whole file in `--num-proc` processes, and
`--steps` training steps of a small GSS model. Measured per run: the peak memory of train.py and all its
descendants together (their summed proportional set sizes, sampled every 0.1 s from /proc: tokenizing a piece takes
longer than that), and the wall time. The ratio of the largest size's peak to the smallest's is the figure that
matters: close to 1 means memory does not grow with the document.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TEXT_DIR = REPO / "tests" / "fixtures" / "text"


def write_text(path: Path, megabytes: float) -> int:
    """A UTF-8 file of about `megabytes` MB made of numbered copies of the fixture texts; returns its size."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(TEXT_DIR.glob("*.txt"))]
    target = int(megabytes * 1_000_000)
    written, copy = 0, 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            for text in texts:
                chunk = f"\n\n[copy {copy}]\n\n{text}"
                handle.write(chunk)
                written += len(chunk.encode("utf-8"))
            copy += 1
    return path.stat().st_size


def tree_pss_bytes(root: int) -> int:
    """Memory of `root` and every process descending from it: the sum of their proportional set sizes, in which a
    page shared by n processes (a forked worker shares its parent's) counts 1/n in each, so nothing counts twice."""
    parents, pss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/smaps_rollup") as smaps:
                pss[int(entry)] = next(int(line.split()[1]) * 1024 for line in smaps if line.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):  # the process ended while we looked
            continue
    total, frontier = 0, {root}
    while frontier:
        total += sum(pss.get(pid, 0) for pid in frontier)
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
    return total


def run(size_mb: float, work: Path, args) -> dict:
    data = work / f"text-{size_mb}mb.txt"
    size = write_text(data, size_mb)
    validation = TEXT_DIR / "books_carroll_alice_in_wonderland.txt"
    config = {
        "model": {"hidden_size": 64, "num_hidden_layers": 2},
        "data": {"sources": {"text": {"train": str(data), "validation": str(validation)}}, "seq_len": 512,
                 "cache_dir": str(work / f"cache-{size_mb}"), "num_proc": args.num_proc},
        "tokenizer": {"kind": "byte_bpe", "vocab_size": 4096, "training_chars": args.tokenizer_chars},
        "training": {"max_steps": args.steps, "batch_size": 4, "eval_every": 1000, "eval_blocks": 4,
                     "warmup_steps": 0, "keep_freed_host_memory": False},
        "output": {"dir": str(work / f"run-{size_mb}"), "save_every": 1000, "tracker": None},
    }
    config_path = work / f"config-{size_mb}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(config_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss_bytes(process.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"train.py failed on {size_mb} MB:\n{process.stderr.read()[-3000:]}")
    return {"text_mb": size / 1e6, "peak_memory_mb": peak / 1e6, "wall_s": wall}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[2, 200],
                        help="text sizes in MB, smallest first: the first is the baseline")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--tokenizer-chars", type=int, default=2_000_000)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ssmlm-bench-data-") as work:
        runs = [run(size, Path(work), args) for size in args.sizes_mb]
    baseline = runs[0]
    for result in runs:
        result["peak_memory_vs_first"] = result["peak_memory_mb"] / baseline["peak_memory_mb"]
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    results = {"machine": machine,
               "settings": vars(args) | {"out": str(args.out)}, "runs": runs}
    print("| text | peak memory (PSS), train.py and its processes | vs the first | wall |")
    print("|---:|---:|---:|---:|")
    for result in runs:
        print(f"| {result['text_mb']:,.1f} MB | {result['peak_memory_mb']:,.0f} MB | "
              f"{result['peak_memory_vs_first']:.2f}x | {result['wall_s']:.0f} s |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
