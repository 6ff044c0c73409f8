"""What each command measures, as its JSON records it (`settings`): Settings for train, generate and all, with the
GPU's and --quick's defaults; and the settings of each other command, whose fields are its options and whose
docstring is its --help.

Free of torch, for `ssmlm-bench COMMAND --help`: the defaults that ask torch (the thread count, the device) are
resolved when a settings object is made, after the command line is parsed.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import BASELINE, CONTENDERS_DIR, MODEL_NAMES
from .size import BATCH_SIZE, MEGA_CHUNK_SIZE

if TYPE_CHECKING:
    from .contenders import Contenders

# What a run on a GPU, and a quick run (tiny sizes, to check the harness), set unless chosen otherwise.
# On a GPU a step holds about 64k tokens, the batch shrinking as the length grows: at batch 1 a 4.6 M-parameter
# model at 2k tokens leaves the device idle between kernel launches.
GPU_DEFAULTS = {"lengths": [2048, 8192, 16384, 65536], "matmul_size": 8192, "tokens_per_step": 65536}
QUICK = {"lengths": [128, 256], "prompt_lengths": [128, 256], "new_tokens": 16, "repeats": 2, "matmul_size": 512}


# The defaults that ask torch, which is imported when a settings object is made, not when the command line is built.


def default_threads() -> int:
    import torch

    return torch.get_num_threads()  # torch's own choice


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    threads: int = field(default_factory=default_threads)
    contenders_dir: Path = CONTENDERS_DIR  # where the public implementations are installed
    gss_shape: tuple[int, int] | None = None  # GSS's (H, N); None: SSMLMConfig's
    host_allocator: str = "keep-freed"  # or "system" (ssmlm/tooling/memory.py)
    quick: bool = False  # tiny sizes, to check the harness
    tokens_per_step: int = 0  # training batch: tokens_per_step // length sequences (at least 1); 0: BATCH_SIZE

    def training_batch(self, length: int) -> int:
        return max(1, self.tokens_per_step // length) if self.tokens_per_step else BATCH_SIZE

    def contenders(self) -> "Contenders":
        from .contenders import Contenders  # here: it imports torch

        return Contenders(self.gss_shape, self.contenders_dir)

    def to_json(self) -> dict:
        return asdict(self) | {"contenders_dir": str(self.contenders_dir)}


# The settings of the other commands, each run by its module.


@dataclass
class MegaChunkSettings:
    """Training time per token of Mega-chunk (attention inside chunks of c tokens) against full-attention Mega, at
    growing sequence lengths: Mega-chunk's should stay flat, full attention's grow with the length.

    Each step is forward + backward of the language-model loss on `--batch-size` sequences of each length (the same
    batch at every length: a larger batch at the shorter lengths would share the EMA kernel, built once per call, among
    more tokens and hide how the cost per token scales). Both models run in one process, interleaved (each repetition
    times every (model, length) once, after a warmup), so machine noise hits them alike. The table gives the medians of
    the wall-clock time and of this process's CPU time per token, each also relative to the same model at the first
    length; on a machine shared with other work the CPU time is the steadier of the two. A full-attention length whose
    attention matrices would not fit in the free memory is skipped, and says so.
    """

    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    repeats: int = 5
    batch_size: int = 1
    chunk_size: int = MEGA_CHUNK_SIZE
    hidden_size: int = 128
    layers: int = 2
    vocab_size: int = 1024
    threads: int = field(default_factory=default_threads)
    host_allocator: str = "keep-freed"  # or "system" (ssmlm/tooling/memory.py)


@dataclass
class CompileSettings:
    """torch.compile against eager: training step time and decoding ms per token of the same models, compiled with
    inductor and `dynamic=True` (what `training.compile` does), at the benchmark's size (size.py).

    Each model runs eager and compiled in one process, interleaved with the other runs (run_interleaved: a warmup, then
    repetitions in rotating order), so machine noise hits both alike. The first call of a compiled run is its compile,
    timed apart and not counted in the medians. There is no speed target on the CPU: inductor's CPU code does not cover
    complex numbers (the SSM kernels' modes and FFTs stay eager calls inside the graph), so what it can fuse is the real
    work around them.
    """

    models: list[str] = field(default_factory=lambda: ["gss", "mega-chunk", "hybrid"])
    lengths: list[int] = field(default_factory=lambda: [1024, 4096])  # training sequence lengths
    prompt_length: int = 1024
    new_tokens: int = 64
    repeats: int = 3
    threads: int = field(default_factory=default_threads)
    host_allocator: str = "keep-freed"  # or "system" (ssmlm/tooling/memory.py)
    batch_size: int = field(default=BATCH_SIZE, metadata={"option": False})  # recorded for whoever reads the JSON


@dataclass
class BatchedSettings:
    """Serving many streams: generated tokens/s when B sequences decode at once after a prompt, the cache each sequence
    holds, and decoding MFU, for GSS, Mega-chunk, the hybrid, Llama and transformers' Mamba at matched parameters.

    Each (model, prompt length) is prefilled once at batch 1; every timed run copies that cache, repeats it B times
    (`batch_repeat_interleave`, as generate() does for several sequences per prompt) and decodes `new_tokens` greedy
    steps for all B at once, so the prefill is not timed and every batch size decodes from the same state. All runs are
    interleaved with two matmul timings: the big square one MFU is measured against, and one of a decoding step's own
    shape (B × d by d × 4d at the largest B), the rate a decoding step's matmuls could reach at best. And for each model
    and B, its linear layers alone: every projection and the logits, with the model's own weights, as many times as the
    decoding steps run them: what the step would cost if all the rest (the state update, attention over the cache,
    norms, activations, the framework) were free. Cache bytes are those of one sequence's cache after its prompt:
    constant for the recurrent models, growing with the prompt for Llama's keys and values.
    """

    models: list[str] = field(default_factory=lambda: ["gss", "mega-chunk", "hybrid", BASELINE, "mamba"])
    prompt_lengths: list[int] = field(default_factory=lambda: [1024, 8192])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    new_tokens: int = 32
    repeats: int = 3
    matmul_size: int = 2048
    device: str = field(default_factory=default_device)
    threads: int = field(default_factory=default_threads)
    host_allocator: str = "keep-freed"  # or "system" (ssmlm/tooling/memory.py)


@dataclass
class LongStreamSettings:
    """One very long stream: a model decodes `tokens` tokens after a prompt, one at a time with its cache, and every
    `every` tokens the mean ms/token of that stretch, the process's resident memory and the cache's bytes are recorded.
    A recurrent model's figures should stay flat however long the stream: a constant state, no growing buffer, no
    slowdown. Greedy decoding of a randomly initialised model (what is generated does not matter here).
    """

    models: list[str] = field(default_factory=lambda: ["gss", "mega-chunk"])
    prompt_length: int = 1024
    tokens: int = 131072
    every: int = 8192
    device: str = field(default_factory=default_device)
    threads: int = field(default_factory=default_threads)
    host_allocator: str = "keep-freed"  # or "system" (ssmlm/tooling/memory.py)
