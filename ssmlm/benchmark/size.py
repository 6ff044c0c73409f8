"""The size every contender is built at and the batch it is measured with: fixed, so that runs compare with the
committed ones (reports/benchmarks/), and how a contender's size is counted."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings.py reads the sizes for the command line, which answers --help without torch
    from torch import nn

VOCAB_SIZE, HIDDEN_SIZE, NUM_LAYERS, NUM_HEADS = 8192, 256, 4, 4
BATCH_SIZE = 1
MEGA_CHUNK_SIZE = 128  # Mega-chunk's c, ours and transformers 4.x's alike, as in the reference figures


def count_parameters(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight is listed once
