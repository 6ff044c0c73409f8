"""The contenders, built by name: GSS, GSS with each of the other kernels, the S4 LM, H3 and its hybrid, Mega-chunk,
the GSS-Transformer hybrid, transformers' Llama (the baseline) and Mamba (the SSM language model in transformers),
and the public implementations (public.py). Each is
built at the benchmark's size (size.py) and, but for GSS and the kernel variants, matched to GSS's parameter count.

A builder raises NotImplementedYet for a model whose block kind is not in the registry (ssmlm.model.blocks.BLOCKS), and
the harness reports it as skipped.
"""

import importlib
from collections.abc import Callable
from functools import cache, cached_property
from pathlib import Path

import torch
from torch import nn

from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM, PreTrainedModel

from ..model.blocks import BLOCKS
from ..model.configuration import SSMLMConfig
from ..model.kernels import KERNELS
from ..model.modeling import SSMLMForCausalLM
from . import BASELINE, CONTENDERS_DIR, GSS_PORT, LEGACY_MEGA, MAMBA, MODEL_NAMES
from .public import ContenderUnavailable, GSSPort, WorkerContender, import_gss_port, start_legacy_mega
from .size import HIDDEN_SIZE, MEGA_CHUNK_SIZE, NUM_HEADS, NUM_LAYERS, VOCAB_SIZE, count_parameters

LLAMA_MAX_POSITIONS = 262144  # RoPE needs a bound; above every length benchmarked here (128k prompts and more)
HYBRID_ATTENTION_WINDOW = 512  # the hybrid's Transformer block attends inside chunks of this many tokens

# The public implementations ours are measured against ("× public"): each of ours, and its public counterpart,
# which ours should outpace at training by at least TARGET_SPEEDUP_VS_PUBLIC.
PUBLIC_COUNTERPARTS = {"gss": GSS_PORT, "mega-chunk": LEGACY_MEGA}
TARGET_SPEEDUP_VS_PUBLIC = 1.5

# GSS with each of the other kernels, at the settings its class declares (BENCHMARK_SETTINGS: each paper's own state
# size and options), unless a GSS shape is given for all. The names are MODEL_NAMES' (which the assertion below
# checks).
KERNEL_CONTENDERS = {f"gss-{kind}": dict(ssm_kernel=kind, **kernel.BENCHMARK_SETTINGS)
                     for kind, kernel in KERNELS.items() if kernel.BENCHMARK_SETTINGS is not None}


# transformers' Mamba without its fused kernels (mamba_ssm and causal_conv1d, GPU only) runs its reference path: a
# Python loop over the tokens that keeps (batch, width, length, state) tensors, and in training the autograd graph
# of every step of the loop. Its time and memory grow so fast with the length that it is not run past these
# lengths: training lengths, and prompts, by device.
MAMBA_REFERENCE_PATH_MAX_LENGTH = {"training": {"cpu": 1024, "cuda": 8192}, "prompt": {"cpu": 8192, "cuda": 32768}}


class NotImplementedYet(Exception):
    pass


@cache
def mamba_fused_kernels_installed() -> bool:
    """Whether mamba_ssm and causal_conv1d import: transformers falls back to its reference path when they do not
    (a build for another torch is installed but fails to load)."""
    try:
        for package in ("mamba_ssm", "causal_conv1d"):
            importlib.import_module(package)
    except Exception:  # any failure to load makes transformers fall back
        return False
    return True


def skipped_at_length(model: nn.Module | WorkerContender, length: int, training: bool) -> str | None:
    """Why a contender is not run at a training length, or after a prompt, of `length` tokens; None if it is."""
    if not isinstance(model, MambaForCausalLM) or mamba_fused_kernels_installed():
        return None
    use, device = "training" if training else "prompt", model.device.type
    limit = MAMBA_REFERENCE_PATH_MAX_LENGTH[use].get(device)
    if limit is None or length <= limit:
        return None
    return (f"skipped: transformers' reference Mamba path (mamba_ssm and causal_conv1d do not import) is not run "
            f"past {limit:,} tokens ({use}) on {device}")


class Contenders:
    """Builds the contenders at one GSS shape: GSS's SSM width and modes (H, N), those of the hybrid's GSS blocks
    and of the GSS port too; SSMLMConfig's H = d/4, N = 2H when none is given. Every other contender is matched to
    the parameter count that results. `contenders_dir` is where scripts/install_bench_contenders.sh put the public
    implementations."""

    def __init__(self, gss_shape: tuple[int, int] | None = None, contenders_dir: Path = CONTENDERS_DIR):
        # As SSMLMConfig's fields; empty for its defaults.
        self.gss_shape_fields = {} if gss_shape is None else {"ssm_size": gss_shape[0],
                                                               "ssm_state_size": gss_shape[1]}
        self.contenders_dir = Path(contenders_dir)

    def ssmlm_config(self, **overrides) -> SSMLMConfig:
        return SSMLMConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, num_hidden_layers=NUM_LAYERS,
                           **(self.gss_shape_fields | overrides))

    @cached_property
    def gss_parameter_count(self) -> int:
        """The count every contender is matched to."""
        with torch.device("meta"):
            return count_parameters(build_gss(self))

    def matched_intermediate_size(self, model_with: Callable[["Contenders", int], PreTrainedModel]) -> int:
        """The MLP/FFN width that gives a contender GSS's parameter count. The count is linear in it, so two builds
        on the meta device (no memory, no initialisation) give the slope."""
        with torch.device("meta"):
            at_256, at_512 = (count_parameters(model_with(self, width)) for width in (256, 512))
        return round(256 + (self.gss_parameter_count - at_256) * 256 / (at_512 - at_256))

    def build(self, name: str, device: torch.device, threads: int | None = None,
              memory_limit_mib: int = 0) -> nn.Module | WorkerContender:
        """The contender `name` on `device`; `threads` and `memory_limit_mib` are for a worker process's own."""
        torch.manual_seed(0)
        if name == GSS_PORT:
            return GSSPort(import_gss_port(self.contenders_dir), self.ssmlm_config()).to(device)
        if name == LEGACY_MEGA:
            return start_legacy_mega(self.contenders_dir, device, threads or torch.get_num_threads(),
                                     self.gss_parameter_count, memory_limit_mib)
        return MODEL_BUILDERS[name](self).to(device)

    def build_all(self, names: list[str], device: torch.device,
                  threads: int | None = None) -> tuple[dict[str, nn.Module | WorkerContender], dict[str, str]]:
        """The contenders that build, and for each of the others why not."""
        models, skipped = {}, {}
        for name in names:
            try:
                models[name] = self.build(name, device, threads)
            except NotImplementedYet:
                skipped[name] = "skipped: not implemented yet"
            except ContenderUnavailable as reason:
                skipped[name] = f"skipped: {reason}"
            except Exception as error:  # one contender that cannot build does not stop the others
                skipped[name] = f"error: {type(error).__name__}: {error}"
        return models, skipped


def require_block_type(kind: str):
    if kind not in BLOCKS:
        raise NotImplementedYet(f"block type {kind!r} is not in ssmlm.model.blocks.BLOCKS")


def build_gss(contenders: Contenders) -> PreTrainedModel:
    return SSMLMForCausalLM(contenders.ssmlm_config())


class GSSWithLogitsLoss(SSMLMForCausalLM):
    """GSS whose training loss is computed from its logits (transformers' path: the logits, then cross-entropy),
    where ssmlm's trainer, and the benchmark for every ssmlm model, uses the fused loss: its baseline."""

    def forward(self, *args, return_logits: bool = True, **kwargs):
        return super().forward(*args, return_logits=True, **kwargs)


def gss_with_kernel(name: str) -> Callable[[Contenders], PreTrainedModel]:
    return lambda contenders: SSMLMForCausalLM(
        contenders.ssmlm_config(**(KERNEL_CONTENDERS[name] | contenders.gss_shape_fields)))


# Each `*_with` builds a contender at a given MLP/FFN width; `matched` solves the width for GSS's count.


def h3_with(contenders: Contenders, intermediate_size: int,
            attention_layers: tuple[int, ...] = ()) -> PreTrainedModel:
    """H3 blocks (head dimension 1, shift 64, 32 modes, as the paper's language models), with full attention at
    `attention_layers` for the hybrid."""
    require_block_type("h3")
    blocks = ["attention" if index in attention_layers else "h3" for index in range(NUM_LAYERS)]
    return SSMLMForCausalLM(contenders.ssmlm_config(
        block_types=blocks, block_options={"attention": {"num_heads": NUM_HEADS}}, intermediate_size=intermediate_size))


def h3_hybrid_with(contenders: Contenders, intermediate_size: int) -> PreTrainedModel:
    return h3_with(contenders, intermediate_size, attention_layers=(1, NUM_LAYERS - 1))


def s4_lm_with(contenders: Contenders, intermediate_size: int) -> PreTrainedModel:
    """The S4 paper's language model: plain SSM blocks (an S4 layer over the full width, GLU, a feed-forward)."""
    require_block_type("ssm")
    return SSMLMForCausalLM(contenders.ssmlm_config(block_types=["ssm"] * NUM_LAYERS, ssm_kernel="s4",
                                                    ssm_state_size=32, intermediate_size=intermediate_size))


def mega_chunk_with(contenders: Contenders, intermediate_size: int) -> PreTrainedModel:
    require_block_type("mega")
    return SSMLMForCausalLM(contenders.ssmlm_config(block_types=["mega"] * NUM_LAYERS,
                                                    block_options={"mega": {"chunk_size": MEGA_CHUNK_SIZE}},
                                                    intermediate_size=intermediate_size))


def hybrid_with(contenders: Contenders, intermediate_size: int) -> PreTrainedModel:
    require_block_type("attention")
    # The GSS paper's hybrid puts a Transformer block with chunked attention after every few GSS blocks: here the
    # last of the four.
    return SSMLMForCausalLM(contenders.ssmlm_config(block_types=["gss"] * (NUM_LAYERS - 1) + ["attention"],
                                                    block_options={"attention": {
                                                        "num_heads": NUM_HEADS, "span": "chunked",
                                                        "window": HYBRID_ATTENTION_WINDOW}},
                                                    intermediate_size=intermediate_size))


def llama_with(contenders: Contenders, intermediate_size: int) -> PreTrainedModel:
    """Llama has no SSM: the GSS shape reaches it only through the count it is matched to."""
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=intermediate_size,
        max_position_embeddings=LLAMA_MAX_POSITIONS,
        tie_word_embeddings=True,  # as ssmlm does, so the embeddings count the same on both sides
        attn_implementation="sdpa",
    ))


def mamba_with(contenders: Contenders, intermediate_size: int) -> PreTrainedModel:
    """transformers' Mamba (state 16, convolution 4, as its defaults), its inner width solved for GSS's count: the
    SSM language model a user would pick today. Without the fused kernels (mamba_ssm, causal_conv1d; GPU only) it
    runs transformers' PyTorch path."""
    config = MambaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, num_hidden_layers=NUM_LAYERS,
                         tie_word_embeddings=True)
    config.intermediate_size = intermediate_size  # `expand` is an integer; the width it sets is what is matched
    return MambaForCausalLM(config)


def matched(model_with: Callable[[Contenders, int], PreTrainedModel]) -> Callable[[Contenders], PreTrainedModel]:
    return lambda contenders: model_with(contenders, contenders.matched_intermediate_size(model_with))


# The contenders built in the harness's process from the model library and transformers.
MODEL_BUILDERS: dict[str, Callable[[Contenders], PreTrainedModel]] = {
    "gss": build_gss,
    "gss-logits-loss": lambda contenders: GSSWithLogitsLoss(contenders.ssmlm_config()),
    **{name: gss_with_kernel(name) for name in KERNEL_CONTENDERS},
    "s4-lm": matched(s4_lm_with),
    "h3": matched(h3_with),
    "h3-hybrid": matched(h3_hybrid_with),
    "mega-chunk": matched(mega_chunk_with),
    "hybrid": matched(hybrid_with),
    BASELINE: matched(llama_with),
    MAMBA: matched(mamba_with),
}
assert set(MODEL_NAMES) == set(MODEL_BUILDERS) | {GSS_PORT, LEGACY_MEGA}


def describe_model(model: PreTrainedModel | GSSPort | WorkerContender) -> dict:
    if hasattr(model, "describe"):  # a public implementation
        return model.describe()
    total = count_parameters(model)
    config = model.config
    # The fields that say what a block does beyond its kind (chunk sizes, windows), for whoever reads the result.
    shape_fields = {
        name: value for name, value in config.to_dict().items()
        if any(word in name for word in ("chunk", "window", "intermediate", "ssm_size", "ssm_state"))
    }
    return {
        "class": type(model).__name__,
        "parameters": total,
        "non_embedding_parameters": total - model.get_input_embeddings().weight.numel(),
        "blocks": getattr(config, "block_types", None) or [type(layer).__name__ for layer in model.base_model.layers],
        "config": shape_fields,
    }
