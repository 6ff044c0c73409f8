"""What one run measures, and how: Settings, recorded in the run's JSON as `settings`."""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .contenders import MODEL_NAMES, Contenders
from .public import CONTENDERS_DIR
from .size import BATCH_SIZE

# What a run on a GPU, and a quick run (tiny sizes, to check the harness), set unless chosen otherwise.
# On a GPU a step holds about 64k tokens, the batch shrinking as the length grows: at batch 1 a 4.6 M-parameter
# model at 2k tokens leaves the device idle between kernel launches.
GPU_DEFAULTS = {"lengths": [2048, 8192, 16384, 65536], "matmul_size": 8192, "tokens_per_step": 65536}
QUICK = {"lengths": [128, 256], "prompt_lengths": [128, 256], "new_tokens": 16, "repeats": 2, "matmul_size": 512}


@dataclass
class Settings:
    """The defaults are those of a full run on the CPU; the command line applies GPU_DEFAULTS and QUICK."""

    phase: str = "all"  # "train", "generate" or "all"
    device: str = "cpu"  # "cpu" or "cuda"
    models: list[str] = field(default_factory=lambda: list(MODEL_NAMES))
    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])  # training sequence lengths
    prompt_lengths: list[int] = field(default_factory=lambda: [1024, 8192, 32768])
    new_tokens: int = 256  # decoded after each prompt
    repeats: int = 5  # measured repetitions of each figure, after a warmup
    matmul_size: int = 2048  # side of the matmul timed for the peak MFU is measured against
    memory_limit_mib: int = 0  # address-space limit of each peak-memory process on the CPU; 0: none
    threads: int = field(default_factory=torch.get_num_threads)
    contenders_dir: Path = CONTENDERS_DIR  # where the public implementations are installed
    gss_shape: tuple[int, int] | None = None  # GSS's (H, N); None: SSMLMConfig's
    host_allocator: str = "keep-freed"  # or "system" (ssmlm/tooling/memory.py)
    quick: bool = False  # tiny sizes, to check the harness
    tokens_per_step: int = 0  # training batch: tokens_per_step // length sequences (at least 1); 0: BATCH_SIZE

    def training_batch(self, length: int) -> int:
        return max(1, self.tokens_per_step // length) if self.tokens_per_step else BATCH_SIZE

    def contenders(self) -> Contenders:
        return Contenders(self.gss_shape, self.contenders_dir)

    def to_json(self) -> dict:
        return asdict(self) | {"contenders_dir": str(self.contenders_dir)}
