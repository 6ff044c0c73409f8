"""Train an ssmlm model from a YAML config: `python train.py --help`. The same command as `ssmlm-train` (the logic is
ssmlm/cli/train.py), with the same exit codes.

    python train.py                                          # configs/gss-small.yaml on the default corpus
    python train.py --config configs/gss-small.yaml training.max_steps=100 output.dir=runs/try
    python train.py --config ... --resume                    # continue from the newest intact checkpoint
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ...
"""

import sys

from ssmlm.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
