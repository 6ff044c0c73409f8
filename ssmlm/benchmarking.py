"""Speed, memory and FLOPs benchmarks of the ssmlm models against transformers' Llama (sdpa attention), and against
the public implementations of GSS and Mega-chunk where they are installed (scripts/install_bench_contenders.sh).

    training    tokens/s of forward + backward + AdamW step, batch 1, at several sequence lengths, and the
                peak memory of each (model, length), each in a process of its own
    generation  prefill time of a prompt (one forward with the cache on) and ms per new token (a greedy loop of
                one-token forwards reusing the cache), after prompts of several lengths
    MFU         analytic FLOPs per token / time, over the matmul FLOP/s of this machine measured in the same run

All contenders are measured in one process and interleaved (each repetition runs every model once, after a
warmup), so machine noise hits them alike; figures are medians, with every repetition kept in the JSON.
`compare` flags the figures of a run that got worse than a saved one. Run it through `scripts/bench.py`;
docs/benchmarks.md explains each figure and the FLOPs formulas.
"""

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import CausalLMOutput

from .configuration import SSMLMConfig
from .blocks import BLOCKS
from .kernels import SSMKernel
from .tooling.markdown import markdown_table
from .tooling.memory import (
    add_host_allocator_option,
    available_memory_mib,
    is_out_of_memory,
    keep_freed_host_memory,
    mentions_out_of_memory,
)
from .modeling import SSMLMForCausalLM

# The size every contender is built at: the reference figures of the issue were taken at this size.
VOCAB_SIZE, HIDDEN_SIZE, NUM_LAYERS, NUM_HEADS = 8192, 256, 4, 4
BATCH_SIZE = 1
LLAMA_MAX_POSITIONS = 131072  # RoPE needs a bound; above every length benchmarked here
BASELINE = "llama"
MATMUL = "matmul"  # the name of the matmul timing among the contenders of each measurement
MEGA_CHUNK_SIZE = 128  # Mega-chunk's c, as in the reference figures of transformers 4.x Mega-chunk
HYBRID_ATTENTION_WINDOW = 512  # the hybrid's Transformer block attends inside chunks of this many tokens

DEFAULT_LENGTHS = {"cpu": [1024, 4096, 16384], "cuda": [1024, 4096, 16384, 65536]}
DEFAULT_PROMPT_LENGTHS = [1024, 8192, 32768]
QUICK = {"lengths": [128, 256], "prompt_lengths": [128, 256], "new_tokens": 16, "repeats": 2, "matmul_size": 512}

# The public implementations ours are measured against ("× public"): each of ours, and its public counterpart,
# which ours should outpace at training by at least TARGET_SPEEDUP_VS_PUBLIC.
GSS_PORT, LEGACY_MEGA = "gss-port", "mega-chunk-hf4"
PUBLIC_COUNTERPARTS = {"gss": GSS_PORT, "mega-chunk": LEGACY_MEGA}
TARGET_SPEEDUP_VS_PUBLIC = 1.5
REPO_ROOT = Path(__file__).resolve().parent.parent
CONTENDERS_DIR = REPO_ROOT / ".bench-contenders"  # where scripts/install_bench_contenders.sh installs them
LEGACY_MEGA_WORKER = REPO_ROOT / "scripts" / "bench_worker_legacy_mega.py"
INSTALL_HINT = "run scripts/install_bench_contenders.sh"


# ----------------------------------------------------------------------------------------------------------------
# The contenders: a registry of builders. A builder raises NotImplementedYet for a model whose blocks are still
# being written, and the harness reports it as skipped.


class NotImplementedYet(Exception):
    pass


# The SSM shape of GSS (and of the hybrid's GSS blocks and the GSS port): SSMLMConfig's H = d/4, N = 2H unless
# --gss-shape sets it (use_gss_shape); every other contender is matched to the parameter count that results.
GSS_SHAPE: dict[str, int] = {}


def use_gss_shape(shape: list[int] | None):
    GSS_SHAPE.clear()
    if shape:
        GSS_SHAPE.update(ssm_size=shape[0], ssm_state_size=shape[1])
    gss_parameter_count.cache_clear()
    matched_intermediate_size.cache_clear()


def ssmlm_config(**overrides) -> SSMLMConfig:
    return SSMLMConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, num_hidden_layers=NUM_LAYERS,
                       **(GSS_SHAPE | overrides))


def require_block_type(kind: str):
    if kind not in BLOCKS:
        raise NotImplementedYet(f"block type {kind!r} is not in ssmlm.blocks.BLOCKS")


def build_gss() -> PreTrainedModel:
    return SSMLMForCausalLM(ssmlm_config())


# GSS with each of the other kernels, at each paper's own state size (S4: N = 64 real, 32 complex modes; DSS: 64
# modes; DLR: 1024; S5: P = 256, 128 pairs), unless --gss-shape sets one for all. DSS-softmax normalises at the 1k
# tokens of the shortest training length; SGConv's kernel spans the longest, 16k (it is zero beyond its length).
KERNEL_CONTENDERS = {
    "gss-s4": dict(ssm_kernel="s4", ssm_state_size=32),
    "gss-dss-softmax": dict(ssm_kernel="dss-softmax", ssm_state_size=64,
                            ssm_kernel_options={"normalization_length": 1024}),
    "gss-dlr": dict(ssm_kernel="dlr", ssm_state_size=1024),
    "gss-s5": dict(ssm_kernel="s5", ssm_state_size=128, ssm_kernel_options={"blocks": 8}),
    "gss-liquid-s4": dict(ssm_kernel="liquid-s4", ssm_kernel_options={"order": 2}),
    "gss-sgconv": dict(ssm_kernel="sgconv", ssm_kernel_options={"kernel_length": 16384, "kernel_dim": 64}),
}


def gss_with_kernel(name: str) -> Callable[[], PreTrainedModel]:
    return lambda: SSMLMForCausalLM(ssmlm_config(**(KERNEL_CONTENDERS[name] | GSS_SHAPE)))


def h3_with(intermediate_size: int, attention_layers: tuple[int, ...] = ()) -> PreTrainedModel:
    """H3 blocks (head dimension 1, shift 64, 32 modes, as the paper's language models), with full attention at
    `attention_layers` for the hybrid."""
    require_block_type("h3")
    blocks = ["attention" if index in attention_layers else "h3" for index in range(NUM_LAYERS)]
    return SSMLMForCausalLM(ssmlm_config(block_types=blocks, attention_num_heads=NUM_HEADS,
                                         intermediate_size=intermediate_size))


def h3_hybrid_with(intermediate_size: int) -> PreTrainedModel:
    return h3_with(intermediate_size, attention_layers=(1, NUM_LAYERS - 1))


def s4_lm_with(intermediate_size: int) -> PreTrainedModel:
    """The S4 paper's language model: plain SSM blocks (an S4 layer over the full width, GLU, a feed-forward)."""
    require_block_type("ssm")
    return SSMLMForCausalLM(ssmlm_config(block_types=["ssm"] * NUM_LAYERS, ssm_kernel="s4", ssm_state_size=32,
                                         intermediate_size=intermediate_size))


def mega_chunk_with(intermediate_size: int) -> PreTrainedModel:
    require_block_type("mega")
    return SSMLMForCausalLM(ssmlm_config(block_types=["mega"] * NUM_LAYERS, mega_chunk_size=MEGA_CHUNK_SIZE,
                                         intermediate_size=intermediate_size))


def hybrid_with(intermediate_size: int) -> PreTrainedModel:
    require_block_type("attention")
    # The GSS paper's hybrid puts a Transformer block with chunked attention after every few GSS blocks: here the
    # last of the four.
    return SSMLMForCausalLM(ssmlm_config(block_types=["gss"] * (NUM_LAYERS - 1) + ["attention"],
                                         attention_num_heads=NUM_HEADS, attention_span="chunked",
                                         attention_window=HYBRID_ATTENTION_WINDOW,
                                         intermediate_size=intermediate_size))


def llama_with(intermediate_size: int) -> PreTrainedModel:
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


@cache
def gss_parameter_count() -> int:
    """The count every contender is matched to."""
    with torch.device("meta"):
        return count_parameters(build_gss())


@cache
def matched_intermediate_size(model_with: Callable[[int], PreTrainedModel]) -> int:
    """The MLP/FFN width that gives a contender GSS's parameter count. The count is linear in it, so two builds
    on the meta device (no memory, no initialisation) give the slope."""
    target = gss_parameter_count()
    with torch.device("meta"):
        at_256, at_512 = (count_parameters(model_with(width)) for width in (256, 512))
    return round(256 + (target - at_256) * 256 / (at_512 - at_256))


def build_mega_chunk() -> PreTrainedModel:
    return mega_chunk_with(matched_intermediate_size(mega_chunk_with))


def build_hybrid() -> PreTrainedModel:
    return hybrid_with(matched_intermediate_size(hybrid_with))


def build_llama() -> PreTrainedModel:
    return llama_with(matched_intermediate_size(llama_with))


def build_s4_lm() -> PreTrainedModel:
    return s4_lm_with(matched_intermediate_size(s4_lm_with))


def build_h3() -> PreTrainedModel:
    return h3_with(matched_intermediate_size(h3_with))


def build_h3_hybrid() -> PreTrainedModel:
    return h3_hybrid_with(matched_intermediate_size(h3_hybrid_with))


MODEL_BUILDERS: dict[str, Callable[[], PreTrainedModel]] = {
    "gss": build_gss,
    **{name: gss_with_kernel(name) for name in KERNEL_CONTENDERS},
    "s4-lm": build_s4_lm,
    "h3": build_h3,
    "h3-hybrid": build_h3_hybrid,
    "mega-chunk": build_mega_chunk,
    "hybrid": build_hybrid,
    BASELINE: build_llama,
}


# ----------------------------------------------------------------------------------------------------------------
# The public implementations: installed apart from the project (scripts/install_bench_contenders.sh), never
# required. One that is missing raises ContenderUnavailable, and the harness reports it as skipped with the reason.


class ContenderUnavailable(Exception):
    pass


def display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return str(path)


def gss_port_in_environment() -> bool:
    return importlib.util.find_spec("gated_state_spaces_pytorch") is not None


def import_gss_port(contenders_dir: Path):
    """lucidrains' gated-state-spaces-pytorch: from this environment if it is installed here, else from
    CONTENDERS_DIR/gss-port, where the install script puts it (appended to sys.path: what this environment has
    comes first)."""
    if not gss_port_in_environment():
        directory = Path(contenders_dir) / "gss-port"
        if not (directory / "gated_state_spaces_pytorch").is_dir():
            raise ContenderUnavailable(f"gated-state-spaces-pytorch is not installed (nor in "
                                       f"{display_path(directory)}); {INSTALL_HINT}, or pip install "
                                       "gated-state-spaces-pytorch")
        if str(directory) not in sys.path:
            sys.path.append(str(directory))
    try:
        return importlib.import_module("gated_state_spaces_pytorch")
    except ImportError as error:  # its __init__ imports scipy and einops too
        raise ContenderUnavailable(f"gated-state-spaces-pytorch does not import ({type(error).__name__}: {error}); "
                                   f"{INSTALL_HINT}") from error


class GSSPort(nn.Module):
    """lucidrains' `GatedStateSpacesLM` (PyPI gated-state-spaces-pytorch), the public PyTorch port of GSS, at our
    GSS's shape (F = dim_expansion_factor·d, H = dss_kernel_H, N = dss_kernel_N, from the same SSMLMConfig), with
    the output projection tied to the embedding as ours is. forward takes the harness's keyword arguments and
    returns the causal LM loss (shifted cross-entropy) as transformers computes ours."""

    generation_unsupported = "not supported: no recurrent mode (the port only convolves over a whole sequence)"

    def __init__(self, port):
        super().__init__()
        config = ssmlm_config()
        self.lm = port.GatedStateSpacesLM(
            num_tokens=VOCAB_SIZE, dim=config.hidden_size, depth=config.num_hidden_layers,
            dim_expansion_factor=config.intermediate_size / config.hidden_size,
            dss_kernel_H=config.ssm_size, dss_kernel_N=config.ssm_state_size,
        )
        self.untied_parameters = count_parameters(self.lm)
        self.lm.to_logits.weight = self.lm.token_emb.weight
        self.shape = {"dim_expansion_factor": config.intermediate_size / config.hidden_size,
                      "dss_kernel_H": config.ssm_size, "dss_kernel_N": config.ssm_state_size}
        self.implementation = f"gated-state-spaces-pytorch {importlib.metadata.version('gated-state-spaces-pytorch')}"

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **unused) -> CausalLMOutput:
        logits = self.lm(input_ids)
        loss = None if labels is None else ForCausalLMLoss(logits, labels, vocab_size=VOCAB_SIZE)
        return CausalLMOutput(loss=loss, logits=logits)

    def describe(self) -> dict:
        total = count_parameters(self)
        return {
            "class": type(self.lm).__name__,
            "parameters": total,
            "non_embedding_parameters": total - self.lm.token_emb.weight.numel(),
            "parameters_untied": self.untied_parameters,  # as the port builds it: its own output projection
            "blocks": [type(layer).__name__ for layer in self.lm.layers],
            "config": self.shape,
            "implementation": self.implementation,
        }


def build_gss_port(contenders_dir: Path, device: torch.device, threads: int) -> GSSPort:
    return GSSPort(import_gss_port(contenders_dir)).to(device)


class WorkerError(RuntimeError):
    pass


class WorkerContender:
    """A contender run in a worker process of its own, driven over JSON lines (the protocol is described in
    scripts/bench_worker_legacy_mega.py): transformers 4.x's Mega cannot be imported beside transformers 5. A
    training step is one request; the worker times it itself, so the exchange is not in the figure."""

    generation_unsupported = (
        "not supported: transformers 4.x Mega-chunk's cached decoding crashes as shipped (RuntimeError: Expected "
        "size for first two dimensions of batch2 tensor to be: [1, 128] but got: [1, 1])")

    def __init__(self, command: list[str], env: dict[str, str] | None = None):
        self.errors = tempfile.TemporaryFile("w+")  # its stderr: the last line says why it died, if it does
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
                                        text=True, env=env)
        self.description: dict = {}

    def request(self, cmd: str, **fields) -> dict:
        try:
            self.process.stdin.write(json.dumps({"cmd": cmd} | fields) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, ValueError):  # a dead worker, or one already closed
            line = ""
        if not line:
            raise self.death()
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise (MemoryError if answer.get("out_of_memory") else WorkerError)(answer["error"])
        return answer

    def death(self) -> Exception:
        code = self.process.wait()
        if code == -signal.SIGKILL:
            return MemoryError("the worker was killed by SIGKILL (the out-of-memory killer, or a hard limit)")
        self.errors.seek(0)
        last_line = (self.errors.read().strip().splitlines() or ["(no output)"])[-1]
        return WorkerError(f"the worker exited with status {code}: {last_line}")

    def training_step(self, length: int) -> Callable[[], dict]:
        """The worker's training step at `length` (a fresh AdamW), prepared on the first call: the warmup."""
        prepared = []

        def step() -> dict:
            if not prepared:
                self.request("prepare", length=length, batch_size=BATCH_SIZE)
                prepared.append(length)
            return {"seconds": self.request("step")["seconds"]}

        return step

    def describe(self) -> dict:
        return self.description

    def close(self):
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.errors):
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def legacy_transformers_dir(contenders_dir: Path) -> Path:
    return Path(contenders_dir) / "transformers4"


def start_legacy_mega(contenders_dir: Path, device: torch.device, threads: int,
                      memory_limit_mib: int = 0) -> WorkerContender:
    """transformers 4.x's MegaForCausalLM as Mega-chunk (decoder-only, causal, chunks of MEGA_CHUNK_SIZE), its FFN
    width solved for GSS's parameter count, in a worker with CONTENDERS_DIR/transformers4 first on its path."""
    directory = legacy_transformers_dir(contenders_dir)
    if not (directory / "transformers").is_dir():
        raise ContenderUnavailable(f"no transformers 4.x environment in {display_path(directory)}; {INSTALL_HINT}")
    paths = [str(directory)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    worker = WorkerContender([sys.executable, str(LEGACY_MEGA_WORKER)],
                             env=os.environ | {"PYTHONPATH": os.pathsep.join(paths)})
    try:
        worker.description = worker.request(
            "build", vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, num_layers=NUM_LAYERS,
            chunk_size=MEGA_CHUNK_SIZE, target_parameters=gss_parameter_count(), threads=threads,
            device=str(device), memory_limit_mib=memory_limit_mib)
    except MemoryError:
        worker.close()
        raise
    except Exception as error:
        worker.close()
        raise ContenderUnavailable(f"transformers 4.x in {display_path(directory)} did not build "
                                   f"MegaForCausalLM: {error}") from error
    return worker


# Built with (contenders_dir, device, threads).
PUBLIC_BUILDERS: dict[str, Callable[[Path, torch.device, int], nn.Module | WorkerContender]] = {
    GSS_PORT: build_gss_port,
    LEGACY_MEGA: start_legacy_mega,
}
WORKER_CONTENDERS = {LEGACY_MEGA}  # run in a worker process, not in the harness's
MODEL_NAMES = ["gss", GSS_PORT, *KERNEL_CONTENDERS, "s4-lm", "h3", "h3-hybrid", "mega-chunk", LEGACY_MEGA,
               "hybrid", BASELINE]  # the order of the tables
assert set(MODEL_NAMES) == set(MODEL_BUILDERS) | set(PUBLIC_BUILDERS)


def build_model(name: str, device: torch.device, contenders_dir: Path = CONTENDERS_DIR,
                threads: int | None = None) -> nn.Module | WorkerContender:
    torch.manual_seed(0)
    if name in PUBLIC_BUILDERS:
        return PUBLIC_BUILDERS[name](Path(contenders_dir), device, threads or torch.get_num_threads())
    return MODEL_BUILDERS[name]().to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight is listed once


def describe_model(model: PreTrainedModel) -> dict:
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
        "blocks": getattr(config, "block_types", None) or [type(layer).__name__ for layer in model.model.layers],
        "config": shape_fields,
    }


# ----------------------------------------------------------------------------------------------------------------
# FLOPs, counted analytically (docs/benchmarks.md has the formulas): a multiply-add is 2 FLOPs; elementwise work
# (norms, activations, gates, exponentials) is not counted.


def attended_pairs(tokens: int, context: int, chunk: int | None) -> int:
    """(query, key) pairs of causal attention for positions context .. context+tokens-1, each attending to the
    keys before it, or only to those in its own chunk of `chunk` tokens (absolute positions, as Mega-chunk)."""
    def pairs_before(n: int) -> int:  # Σ_{p < n} (keys visible at p)
        if chunk is None:
            return n * (n + 1) // 2
        return (n // chunk) * chunk * (chunk + 1) // 2 + (n % chunk) * (n % chunk + 1) // 2
    return pairs_before(context + tokens) - pairs_before(context)


class AttentionShape(NamedTuple):
    query_key_width: int  # summed over heads
    value_width: int
    chunk: int | None  # attention only inside chunks of this many tokens; None: over the whole prefix


# The attention of the layers of models that are not ssmlm's (an ssmlm block gives its own: `attention_shape()`).
# A layer class in neither is reported as not counted.
FOREIGN_ATTENTION_SHAPES: dict[str, Callable[[nn.Module], AttentionShape | None]] = {
    "LlamaDecoderLayer": lambda layer: AttentionShape(layer.self_attn.q_proj.out_features,
                                                      layer.self_attn.q_proj.out_features, None),
}


def attention_shape(layer: nn.Module) -> AttentionShape | None | str:
    """The layer's attention, None for a layer without one, or "unknown"."""
    if hasattr(layer, "attention_shape"):
        shape = layer.attention_shape()
        return None if shape is None else AttentionShape(*shape)
    shape_of = FOREIGN_ATTENTION_SHAPES.get(type(layer).__name__)
    return "unknown" if shape_of is None else shape_of(layer)


def forward_flops(model: PreTrainedModel, tokens: int, context: int = 0, cached: bool = False,
                  logits_tokens: int | None = None, batch: int = BATCH_SIZE) -> tuple[float, list[str]]:
    """FLOPs of one forward over `tokens` new positions after `context` cached ones, computing logits for the
    last `logits_tokens` positions (all by default). Also returns the block classes with no attention formula
    here (only their linear layers and SSMs are counted)."""
    logits_tokens = tokens if logits_tokens is None else logits_tokens
    head = model.get_output_embeddings()
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    flops = 2 * batch * (tokens * linear_weights + logits_tokens * head.weight.numel())
    flops += sum(m.flops(tokens, cached, batch) for m in model.modules() if isinstance(m, SSMKernel))
    uncounted = set()
    for layer in model.model.layers:
        shape = attention_shape(layer)
        if shape == "unknown":
            uncounted.add(type(layer).__name__)
        elif shape is not None:
            # QKᵀ and AV: a multiply-add per width per (query, key) pair.
            pairs = attended_pairs(tokens, context, shape.chunk)
            flops += batch * 2 * (shape.query_key_width + shape.value_width) * pairs
    return flops, sorted(uncounted)


def training_flops_per_token(model: PreTrainedModel, length: int) -> tuple[float | None, list[str]]:
    """Forward + backward ≈ 3 forwards (the backward computes gradients for inputs and weights). None for a public
    implementation: the formulas here read ssmlm's and transformers 5's modules."""
    if not isinstance(model, PreTrainedModel):
        return None, []
    flops, uncounted = forward_flops(model, length)
    return 3 * flops / (BATCH_SIZE * length), uncounted


def generation_flops(model: PreTrainedModel, prompt_length: int, new_tokens: int) -> tuple[float, float, list[str]]:
    """(prefill FLOPs, mean FLOPs per decoded token, uncounted layer kinds); logits only for the last position."""
    prefill, uncounted = forward_flops(model, prompt_length, cached=True, logits_tokens=1)
    decode = statistics.fmean(
        forward_flops(model, 1, context=prompt_length + step, cached=True)[0] for step in range(new_tokens)
    )
    return prefill, decode, uncounted


# ----------------------------------------------------------------------------------------------------------------
# Timing.


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on a GPU (the SSM's FFTs stay in float32 by design); plain float32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def random_tokens(length: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    return torch.randint(0, VOCAB_SIZE, (BATCH_SIZE, length), generator=generator).to(device)


def make_training_step(model: PreTrainedModel, length: int, device: torch.device) -> Callable[[], dict]:
    """A closure that runs one forward + backward + AdamW step over `length` tokens and returns its time."""
    if isinstance(model, WorkerContender):
        return model.training_step(length)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = random_tokens(length, device)

    def step() -> dict:
        synchronize(device)
        start = time.perf_counter()
        with autocast(device):
            loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return {"seconds": time.perf_counter() - start}

    return step


def make_generation(model: PreTrainedModel, prompt_length: int, new_tokens: int,
                    device: torch.device) -> Callable[[], dict]:
    """A closure that prefills a prompt in one forward, then decodes `new_tokens` greedily, one forward per
    token reusing the cache (ssmlm's recurrent state, Llama's DynamicCache), as generate() does."""
    model.eval()
    prompt = random_tokens(prompt_length, device)

    def generate() -> dict:
        with torch.no_grad(), autocast(device):
            synchronize(device)
            start = time.perf_counter()
            output = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            token = output.logits[:, -1:].argmax(-1)
            synchronize(device)
            prefill_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(new_tokens):
                output = model(input_ids=token, past_key_values=output.past_key_values, use_cache=True)
                token = output.logits[:, -1:].argmax(-1)
            synchronize(device)
            decode_seconds = time.perf_counter() - start
        return {"prefill_s": prefill_seconds, "decode_ms_per_token": 1000 * decode_seconds / new_tokens}

    return generate


def failure_status(error: BaseException) -> str:
    if is_out_of_memory(error):
        return "OOM"
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {first_line}"[:200]


def run_interleaved(runs: dict[str, Callable[[], dict]], repeats: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Run every closure once as a warmup, then `repeats` rounds that run each once, so noise on the machine hits
    all contenders alike. The order rotates from round to round, so none always runs right after the same one.
    A closure that raises is reported and dropped; the others go on."""
    samples = {name: [] for name in runs}
    failures = {}
    active = list(runs)

    def attempt(name: str, keep: bool):
        try:
            result = runs[name]()
        except Exception as error:  # a model under development may fail; measure the others regardless
            failures[name] = failure_status(error)
            active.remove(name)
            return
        if keep:
            samples[name].append(result)

    for name in list(active):
        attempt(name, keep=False)
    for round_index in range(repeats):
        shift = round_index % len(active) if active else 0
        for name in active[shift:] + active[:shift]:
            attempt(name, keep=True)
    return {name: values for name, values in samples.items() if name not in failures}, failures


def matmul_dtype(device: torch.device) -> torch.dtype:
    """The dtype the models' matmuls run in: float32 on the CPU, bf16 under autocast on a GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def make_matmul_timing(device: torch.device, size: int) -> Callable[[], dict]:
    """A closure that times a square matmul and returns its FLOP/s: the peak MFU is measured against. It runs in
    the rounds of every measurement beside the models, so it sees the same noise they do."""
    a, b = (torch.randn(size, size, device=device, dtype=matmul_dtype(device)) for _ in range(2))
    inner = 20 if device.type == "cuda" else 1  # a GPU matmul is too short to time alone

    def timed() -> dict:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        return {"flops_per_s": inner * 2 * size**3 / (time.perf_counter() - start)}

    return timed


def run_interleaved_with_matmul(runs: dict[str, Callable[[], dict]], settings: dict, device: torch.device,
                                matmul_rates: list[float]) -> tuple[dict[str, list[dict]], dict[str, str], float]:
    """`run_interleaved` with the matmul timing as one more contender: also returns the median matmul FLOP/s of
    these rounds, and adds its samples to `matmul_rates`."""
    runs = runs | {MATMUL: make_matmul_timing(device, settings["matmul_size"])}
    samples, failures = run_interleaved(runs, settings["repeats"])
    rates = [sample["flops_per_s"] for sample in samples.pop(MATMUL)]
    matmul_rates += rates
    return samples, failures, statistics.median(rates)


# ----------------------------------------------------------------------------------------------------------------
# Peak memory, one process per (model, length): a process's peak is a high-water mark, and running out of memory
# must cost only that one measurement.


def measure_training_peak_memory(name: str, length: int, device: torch.device, threads: int,
                                 memory_limit_mib: int, contenders_dir: Path = CONTENDERS_DIR) -> dict:
    """Two training steps (AdamW allocates its state in the first); peak resident memory of this process on the
    CPU (it includes Python and torch, `baseline_mib` before the model is built), peak allocated on a GPU."""
    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if device.type == "cpu" else 0.0
    torch.set_num_threads(threads)
    if memory_limit_mib:
        limit = memory_limit_mib * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        step = make_training_step(build_model(name, device, contenders_dir, threads), length, device)
        step()
        step()
    except Exception as error:
        return {"status": failure_status(error), "reason": f"{type(error).__name__}: {error}"[:300]}
    if device.type == "cuda":
        return {"status": "ok", "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20, "baseline_mib": 0.0}
    return {"status": "ok", "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "baseline_mib": baseline_mib}


def run_measurement_process(command: list[str]) -> dict:
    """Run a measuring child process; it prints its result as the last line of its output. A child killed by
    SIGKILL (the kernel's out-of-memory killer) or dying of an allocation failure is reported as OOM."""
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode == 0:
        return json.loads(child.stdout.strip().splitlines()[-1])
    if child.returncode == -signal.SIGKILL:
        return {"status": "OOM", "reason": "killed by SIGKILL (the out-of-memory killer, or a hard limit)"}
    if child.returncode < 0:
        return {"status": f"error: killed by {signal.Signals(-child.returncode).name}"}
    last_line = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
    if mentions_out_of_memory(last_line):
        return {"status": "OOM", "reason": last_line}
    return {"status": f"error: {last_line}"}


def peak_memory_command(name: str, length: int, settings: dict) -> list[str]:
    return [sys.executable, "-m", "ssmlm.benchmarking", "peak-memory", "--model", name, "--length", str(length),
            "--device", settings["device"], "--threads", str(settings["threads"]),
            "--memory-limit-mib", str(settings["memory_limit_mib"]),
            "--contenders-dir", str(settings.get("contenders_dir", CONTENDERS_DIR)),
            *gss_shape_arguments(settings.get("gss_shape"))]


def gss_shape_arguments(shape: list[int] | None) -> list[str]:
    return ["--gss-shape", *map(str, shape)] if shape else []


def measure_worker_peak_memory(name: str, length: int, settings: dict) -> dict:
    """The peak of a contender that runs in a worker: a fresh worker, under the same address-space limit, that
    builds the model and runs two training steps, then reports its peak as measure_training_peak_memory does."""
    worker = None
    try:
        worker = PUBLIC_BUILDERS[name](Path(settings.get("contenders_dir", CONTENDERS_DIR)),
                                       torch.device(settings["device"]), settings["threads"],
                                       settings["memory_limit_mib"])
        step = worker.training_step(length)
        step()
        step()
        return {"status": "ok"} | worker.request("memory")
    except Exception as error:
        return {"status": failure_status(error), "reason": f"{type(error).__name__}: {error}"[:300]}
    finally:
        if worker is not None:
            worker.close()


def measure_peak_memory(name: str, length: int, settings: dict) -> dict:
    if name in WORKER_CONTENDERS:
        return measure_worker_peak_memory(name, length, settings)
    return run_measurement_process(peak_memory_command(name, length, settings))


# ----------------------------------------------------------------------------------------------------------------
# The benchmarks.


def build_contenders(names: list[str], device: torch.device, contenders_dir: Path = CONTENDERS_DIR,
                     threads: int | None = None) -> tuple[dict[str, PreTrainedModel], dict[str, str]]:
    models, skipped = {}, {}
    for name in names:
        try:
            models[name] = build_model(name, device, contenders_dir, threads)
        except NotImplementedYet:
            skipped[name] = "skipped: not implemented yet"
        except ContenderUnavailable as reason:
            skipped[name] = f"skipped: {reason}"
        except Exception as error:  # a block still being written may not build; say so and go on
            skipped[name] = f"error: {type(error).__name__}: {error}"
    return models, skipped


def speedup(value: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """How many times faster than the baseline (> 1: faster)."""
    if value is None or baseline is None:
        return None
    return value / baseline if higher_is_better else baseline / value


def benchmark_training(models: dict[str, PreTrainedModel], settings: dict, device: torch.device,
                       matmul_rates: list[float], log: Callable[[str], None]) -> list[dict]:
    jobs = [(name, length) for length in settings["lengths"] for name in models]
    # Memory only: CPU contention does not change it, so a quick run measures in parallel to save time.
    workers = os.cpu_count() if settings["quick"] else 1
    log(f"peak memory: {len(jobs)} subprocesses, {workers} at a time")
    with ThreadPoolExecutor(workers) as pool:
        memory = dict(zip(jobs, pool.map(lambda job: measure_peak_memory(*job, settings), jobs)))

    rows = []
    for length in settings["lengths"]:
        # Skip what ran out of memory in its own process: in this one it could take the harness down.
        runs = {name: make_training_step(model, length, device) for name, model in models.items()
                if memory[name, length]["status"] != "OOM"}
        log(f"training at {length} tokens: {', '.join(runs)}")
        samples, failures, peak_flops = run_interleaved_with_matmul(runs, settings, device, matmul_rates)
        tokens_per_s = {name: [BATCH_SIZE * length / s["seconds"] for s in values] for name, values in samples.items()}
        medians = {name: statistics.median(values) for name, values in tokens_per_s.items()}
        for name, model in models.items():
            row = {"model": name, "length": length, "peak_memory": memory[name, length]}
            if name in medians:
                flops_per_token, uncounted = training_flops_per_token(model, length)
                row |= {
                    "status": "ok",
                    "tokens_per_s": medians[name],
                    "tokens_per_s_repeats": tokens_per_s[name],
                    "speedup_vs_baseline": speedup(medians[name], medians.get(BASELINE), higher_is_better=True),
                    "flops_per_token": flops_per_token,
                    "mfu": None if flops_per_token is None else flops_per_token * medians[name] / peak_flops,
                    "matmul_flops_per_s": peak_flops,
                    "flops_not_counted_for": uncounted,
                }
                if name in PUBLIC_COUNTERPARTS:  # None where the public implementation did not run
                    counterpart = PUBLIC_COUNTERPARTS[name]
                    row |= {"public_counterpart": counterpart, "speedup_vs_public": speedup(
                        medians[name], medians.get(counterpart), higher_is_better=True)}
            else:
                row["status"] = failures.get(name, "OOM")
            rows.append(row)
    return rows


def benchmark_generation(models: dict[str, PreTrainedModel], settings: dict, device: torch.device,
                         matmul_rates: list[float], log: Callable[[str], None]) -> list[dict]:
    rows = []
    new_tokens = settings["new_tokens"]
    for prompt_length in settings["prompt_lengths"]:
        unsupported = {name: model.generation_unsupported for name, model in models.items()
                       if getattr(model, "generation_unsupported", None)}
        runs = {name: make_generation(model, prompt_length, new_tokens, device) for name, model in models.items()
                if name not in unsupported}
        log(f"generation after {prompt_length} prompt tokens: {', '.join(runs)}")
        samples, failures, peak_flops = run_interleaved_with_matmul(runs, settings, device, matmul_rates)
        figures = {
            name: {key: [s[key] for s in values] for key in ("prefill_s", "decode_ms_per_token")}
            for name, values in samples.items()
        }
        medians = {name: {key: statistics.median(v) for key, v in f.items()} for name, f in figures.items()}
        baseline = medians.get(BASELINE, {})
        for name, model in models.items():
            row = {"model": name, "prompt_length": prompt_length, "new_tokens": new_tokens}
            if name not in medians:
                rows.append(row | {"status": unsupported.get(name) or failures[name]})
                continue
            prefill_flops, decode_flops, uncounted = generation_flops(model, prompt_length, new_tokens)
            prefill_s, decode_ms = medians[name]["prefill_s"], medians[name]["decode_ms_per_token"]
            rows.append(row | {
                "status": "ok",
                "prefill_s": prefill_s,
                "prefill_s_repeats": figures[name]["prefill_s"],
                "decode_ms_per_token": decode_ms,
                "decode_ms_per_token_repeats": figures[name]["decode_ms_per_token"],
                "prefill_speedup_vs_baseline": speedup(prefill_s, baseline.get("prefill_s"), higher_is_better=False),
                "decode_speedup_vs_baseline": speedup(decode_ms, baseline.get("decode_ms_per_token"),
                                                      higher_is_better=False),
                "prefill_flops": prefill_flops,
                "decode_flops_per_token": decode_flops,
                "prefill_mfu": prefill_flops / prefill_s / peak_flops,
                "decode_mfu": decode_flops / (decode_ms / 1000) / peak_flops,
                "matmul_flops_per_s": peak_flops,
                "flops_not_counted_for": uncounted,
            })
    return rows


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The commit of the tree measured, "+dirty" with uncommitted changes: what a later comparison is against."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine_info(device: torch.device) -> dict:
    return {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),  # as set for this run
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "compute_dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_revision": git_revision(),
        "load_average_at_start": os.getloadavg(),
    }


@contextlib.contextmanager
def torch_threads(count: int):
    """Run with `count` torch threads, then restore the previous count (the harness also runs inside tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_benchmarks(settings: dict, log: Callable[[str], None] = print) -> dict:
    with torch_threads(settings["threads"]):
        device = torch.device(settings["device"])
        result = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(device),
                  "settings": settings}
        # In this process and in the measuring processes it starts (peak memory, the transformers 4.x worker).
        kept = (device.type == "cpu" and settings.get("host_allocator") == "keep-freed"
                and keep_freed_host_memory())
        result["machine"]["host_allocator"] = "glibc, freed memory kept" if kept else "system default"
        matmul_rates = []  # every matmul timing of the run: the peak the header gives
        models, skipped = build_contenders(settings["models"], device,
                                           settings.get("contenders_dir", CONTENDERS_DIR), settings["threads"])
        try:
            result["models"] = {name: describe_model(model) | {"status": "ok"} for name, model in models.items()}
            result["models"] |= {name: {"status": status} for name, status in skipped.items()}
            for name, status in skipped.items():
                log(f"{name}: {status}")
            if settings["phase"] in ("train", "all"):
                result["train"] = benchmark_training(models, settings, device, matmul_rates, log)
            if settings["phase"] in ("generate", "all"):
                result["generate"] = benchmark_generation(models, settings, device, matmul_rates, log)
        finally:
            for model in models.values():
                if isinstance(model, WorkerContender):
                    model.close()
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["matmul_peak"] = {
        "size": settings["matmul_size"],
        "dtype": str(matmul_dtype(device)).removeprefix("torch."),
        "flops_per_s": statistics.median(matmul_rates),
        "flops_per_s_repeats": matmul_rates,
    }
    result["figures"] = regression_figures(result)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Regression check: the figures a change to the models can make worse, each with its good direction.


def regression_figures(result: dict) -> dict[str, dict]:
    """A flat map 'phase/model/length/figure' -> {value, better}. A failed measurement has value None and its
    status, so a figure that turns into an OOM counts as worse."""
    figures = {}

    def add(prefix: str, row: dict, fields: dict[str, str]):
        for field, better in fields.items():
            if "speedup" in field and row["model"] == BASELINE:
                continue  # the baseline's ratio to itself says nothing
            figures[f"{prefix}/{field}"] = {"value": row.get(field), "better": better, "status": row["status"]}

    for row in result.get("train", []):
        prefix = f"train/{row['model']}/{row['length']}"
        add(prefix, row, {"tokens_per_s": "higher", "speedup_vs_baseline": "higher"})
        if row.get("speedup_vs_public") is not None:  # only where the public implementation ran
            add(prefix, row, {"speedup_vs_public": "higher"})
        add(prefix, {"model": row["model"]} | row["peak_memory"], {"peak_mib": "lower"})
    for row in result.get("generate", []):
        if row["status"].startswith("not supported"):
            continue
        add(f"generate/{row['model']}/{row['prompt_length']}", row, {
            "prefill_s": "lower", "decode_ms_per_token": "lower",
            "prefill_speedup_vs_baseline": "higher", "decode_speedup_vs_baseline": "higher",
        })
    return figures


def compare_results(old: dict, new: dict, tolerance: float) -> tuple[list[str], list[str]]:
    """Lines of a per-figure comparison, and the figures worse than `old` by more than `tolerance` (relative)."""
    old_figures, new_figures = old["figures"], new["figures"]
    lines = [f"{'figure':<52} {'old':>11} {'new':>11} {'change':>8}"]
    worse = []
    for key, before in old_figures.items():
        after = new_figures.get(key)
        if after is None:
            lines.append(f"{key:<52} {format_value(before['value']):>11} {'not run':>11}")
            continue
        if before["value"] is None or after["value"] is None:
            verdict = "WORSE" if before["value"] is not None else ""
            lines.append(f"{key:<52} {format_value(before['value'], before['status']):>11} "
                         f"{format_value(after['value'], after['status']):>11} {'':>8} {verdict}")
            if verdict:
                worse.append(key)
            continue
        change = after["value"] / before["value"] - 1
        got_worse = change < -tolerance if before["better"] == "higher" else change > tolerance
        lines.append(f"{key:<52} {format_value(before['value']):>11} {format_value(after['value']):>11} "
                     f"{change:>+8.1%} {'WORSE' if got_worse else ''}")
        if got_worse:
            worse.append(key)
    lines.append(f"matmul peak: {old['matmul_peak']['flops_per_s'] / 1e9:.0f} GFLOP/s then, "
                 f"{new['matmul_peak']['flops_per_s'] / 1e9:.0f} now (a slower machine moves every figure)")
    if worse:
        lines.append(f"{len(worse)} figure(s) worse by more than {tolerance:.0%}: {', '.join(worse)}")
    else:
        lines.append(f"no figure worse by more than {tolerance:.0%}")
    return lines, worse


# ----------------------------------------------------------------------------------------------------------------
# Markdown.


def format_value(value: float | None, status: str = "") -> str:
    if value is None:
        return status or "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def summarise_blocks(blocks: list[str]) -> str:
    """["gss", "gss", "gss", "attention"] -> "3 gss, attention"."""
    runs = [(kind, len(list(group))) for kind, group in itertools.groupby(blocks)]
    return ", ".join(kind if count == 1 else f"{count} {kind}" for kind, count in runs)


def public_comparison_table(result: dict) -> list[str]:
    """Each of our models against the public implementation of it, at each length: × public is how many times
    faster ours trains; the target is TARGET_SPEEDUP_VS_PUBLIC."""
    train = {(row["model"], row["length"]): row for row in result["train"]}
    rows = []
    for (name, length), row in train.items():
        counterpart = PUBLIC_COUNTERPARTS.get(name)
        if counterpart not in result["models"]:
            continue  # not asked for
        theirs = train.get((counterpart, length))
        if theirs is None:  # skipped (not installed) or failed to build: the Models table says why
            their_figure = result["models"][counterpart]["status"].split(":")[0]
        else:
            their_figure = format_value(theirs.get("tokens_per_s"), theirs["status"])
        ratio = row.get("speedup_vs_public")
        met = "-" if ratio is None else ("yes" if ratio >= TARGET_SPEEDUP_VS_PUBLIC else "no")
        rows.append([name, str(length), format_value(row.get("tokens_per_s"), row["status"]), counterpart,
                     their_figure, format_ratio(ratio), met])
    if not rows:
        return []
    return (["### Against the public implementations", ""]
            + markdown_table(["model", "length", "tokens/s", "public", "its tokens/s", "× public",
                              f"≥ {TARGET_SPEEDUP_VS_PUBLIC}×"], rows)
            + [f"× public: how many times faster than the public implementation of the same model, measured in the "
               f"same rounds (gss: lucidrains' gated-state-spaces-pytorch; mega-chunk: transformers 4.x "
               f"MegaForCausalLM, c = {MEGA_CHUNK_SIZE}); the target is {TARGET_SPEEDUP_VS_PUBLIC}× at every length.",
               ""])


def to_markdown(result: dict) -> str:
    machine, settings, matmul = result["machine"], result["settings"], result["matmul_peak"]
    lines = [
        "# ssmlm benchmark",
        "",
        f"{machine['device_name']}, {machine['nproc']} CPUs, torch threads: {machine['torch_threads']}, "
        f"device {machine['device']}, {machine['compute_dtype']}; torch {machine['torch']}, transformers "
        f"{machine['transformers']}; tree {machine['git_revision']}; {result['created']}; load average "
        f"{machine['load_average_at_start'][0]:.1f} at start, {machine['load_average_at_end'][0]:.1f} at end; "
        f"host allocator: {machine.get('host_allocator', 'system default')}.",
        f"Matmul peak: {matmul['flops_per_s'] / 1e9:.0f} GFLOP/s ({matmul['size']}² {matmul['dtype']}, median of "
        f"{len(matmul['flops_per_s_repeats'])} timed among the models; each MFU is against the matmuls timed in its "
        f"own rounds). Batch {BATCH_SIZE}; medians of {settings['repeats']} "
        f"interleaved repetitions after a warmup; × {BASELINE}: how many times faster than {BASELINE}.",
        "",
        "## Models",
        "",
    ]
    gss_parameters = result["models"].get("gss", {}).get("parameters")
    model_rows = []
    for name, info in result["models"].items():
        if info["status"] != "ok":
            model_rows.append([name, info["status"], "", "", ""])
            continue
        versus_gss = format_ratio(info["parameters"] / gss_parameters) if gss_parameters else "-"
        blocks = summarise_blocks(info["blocks"])
        if info.get("implementation"):
            blocks += f" ({info['implementation']})"
        model_rows.append([name, f"{info['parameters']:,}", f"{info['non_embedding_parameters']:,}", versus_gss,
                           blocks])
    lines += markdown_table(["model", "parameters", "non-embedding", "vs gss", "blocks"], model_rows)

    if "train" in result:
        lines += ["## Training: forward + backward + AdamW step", ""]
        rows = []
        for row in result["train"]:
            memory = row["peak_memory"]
            peak = format_value(memory.get("peak_mib"), memory["status"])
            if row["status"] != "ok":
                rows.append([row["model"], str(row["length"]), row["status"], "", "", peak])
                continue
            rows.append([row["model"], str(row["length"]), format_value(row["tokens_per_s"]),
                         format_ratio(row["speedup_vs_baseline"]), format_percent(row["mfu"]), peak])
        lines += markdown_table(["model", "length", "tokens/s", f"× {BASELINE}", "MFU", "peak MiB"], rows)
        if settings["device"] == "cpu":
            lines += ["Peak MiB: peak resident memory of a process that ran only that model at that length, "
                      "Python and torch included.", ""]
        lines += public_comparison_table(result)

    if "generate" in result:
        lines += [f"## Generation: prefill, then {settings['new_tokens']} new tokens, greedy, with the cache", ""]
        rows = []
        for row in result["generate"]:
            if row["status"] != "ok":
                rows.append([row["model"], str(row["prompt_length"]), row["status"]] + [""] * 5)
                continue
            rows.append([row["model"], str(row["prompt_length"]), format_value(row["prefill_s"]),
                         format_ratio(row["prefill_speedup_vs_baseline"]), format_value(row["decode_ms_per_token"]),
                         format_ratio(row["decode_speedup_vs_baseline"]), format_percent(row["prefill_mfu"]),
                         format_percent(row["decode_mfu"])])
        lines += markdown_table(["model", "prompt", "prefill s", f"× {BASELINE}", "ms/token", f"× {BASELINE}",
                                 "prefill MFU", "decode MFU"], rows)

    uncounted = sorted({kind for phase in ("train", "generate") for row in result.get(phase, [])
                        for kind in row.get("flops_not_counted_for", [])})
    if uncounted:
        lines.append(f"FLOPs (and MFU) count the linear layers and SSMs of {', '.join(uncounted)} but not their "
                     "attention: no formula for it here yet.")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    phases = {
        "train": "training tokens/s, peak memory and MFU",
        "generate": "prefill time, ms per new token and MFU",
        "all": "train, then generate",
    }
    for phase, description in phases.items():
        run = commands.add_parser(phase, help=description)
        run.add_argument("--lengths", type=int, nargs="+",
                         help="training sequence lengths (default 1024 4096 16384; 65536 added on a GPU)")
        run.add_argument("--prompt-lengths", type=int, nargs="+", help="default 1024 8192 32768")
        run.add_argument("--new-tokens", type=int, help="tokens decoded after each prompt (default 256)")
        run.add_argument("--repeats", type=int, help="measured repetitions per figure, after a warmup (default 5)")
        run.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=MODEL_NAMES,
                         help=f"default: all; {GSS_PORT} and {LEGACY_MEGA}, the public implementations, are "
                              "skipped with the reason when they are not installed")
        run.add_argument("--contenders-dir", type=Path, default=CONTENDERS_DIR,
                         help="where scripts/install_bench_contenders.sh put the public implementations: "
                              "DIR/gss-port (unless gated-state-spaces-pytorch is installed in this environment) "
                              f"and DIR/transformers4 (default {display_path(CONTENDERS_DIR)})")
        run.add_argument("--gss-shape", type=int, nargs=2, metavar=("H", "N"),
                         help="GSS's SSM width and modes (default d/4 and 2H, SSMLMConfig's), also for GSS with the "
                              "other kernels (default: each paper's own modes); the other contenders are matched to "
                              "the count that results. 256 512 is the GSS port's default shape")
        run.add_argument("--device", choices=["cpu", "cuda"],
                         default="cuda" if torch.cuda.is_available() else "cpu")
        run.add_argument("--matmul-size", type=int, help="side of the matmul timed for the peak (default 2048 on "
                                                         "the CPU, 8192 on a GPU)")
        run.add_argument("--memory-limit-mib", type=int,
                         help="address-space limit of each peak-memory process on the CPU, so one that needs too "
                              "much fails alone as OOM (default: MemAvailable at start; 0: none)")
        run.add_argument("--threads", type=int, help=f"torch threads (default {torch.get_num_threads()}, torch's "
                                                     "choice); one is far faster on a busy machine, but "
                                                     "compare runs only at the same count")
        add_host_allocator_option(run)
        run.add_argument("--quick", action="store_true",
                         help="tiny sizes to check the harness: lengths 128 256, 16 new tokens, 2 repeats")
        run.add_argument("--out", type=Path, help="write the results as JSON here")
        run.add_argument("--markdown", type=Path, help="write the markdown tables here (always printed)")
        run.add_argument("--compare", type=Path, metavar="OLD_JSON",
                         help="compare with a saved run; exit status 1 if a figure got worse")
        run.add_argument("--tolerance", type=float, default=0.1, help="relative change allowed (default 0.1)")

    compare = commands.add_parser("compare", help="compare two saved runs; exit status 1 if a figure got worse")
    compare.add_argument("old", type=Path)
    compare.add_argument("new", type=Path)
    compare.add_argument("--tolerance", type=float, default=0.1)

    child = commands.add_parser("peak-memory", help="one training peak-memory measurement, as JSON on stdout (the "
                                                    "benchmark runs this in a process per model and length)")
    child.add_argument("--model", choices=sorted(set(MODEL_NAMES) - WORKER_CONTENDERS), required=True)
    child.add_argument("--length", type=int, required=True)
    child.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    child.add_argument("--threads", type=int, default=torch.get_num_threads())
    child.add_argument("--memory-limit-mib", type=int, default=0)
    child.add_argument("--contenders-dir", type=Path, default=CONTENDERS_DIR)
    child.add_argument("--gss-shape", type=int, nargs=2)
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> dict:
    quick = QUICK if args.quick else {}
    on_gpu = args.device == "cuda"
    memory_limit = args.memory_limit_mib
    if memory_limit is None:
        # RLIMIT_AS counts address space, not resident memory, and CUDA reserves far more of it than it uses.
        memory_limit = 0 if on_gpu else available_memory_mib()
    return {
        "phase": args.command,
        "device": args.device,
        "models": args.models,
        "lengths": args.lengths or quick.get("lengths") or DEFAULT_LENGTHS[args.device],
        "prompt_lengths": args.prompt_lengths or quick.get("prompt_lengths") or DEFAULT_PROMPT_LENGTHS,
        "new_tokens": args.new_tokens or quick.get("new_tokens") or 256,
        "repeats": args.repeats or quick.get("repeats") or 5,
        "matmul_size": args.matmul_size or quick.get("matmul_size") or (8192 if on_gpu else 2048),
        "memory_limit_mib": memory_limit,
        "threads": args.threads or torch.get_num_threads(),
        "contenders_dir": str(args.contenders_dir),
        "gss_shape": args.gss_shape,
        "host_allocator": args.host_allocator,
        "quick": args.quick,
        "batch_size": BATCH_SIZE,
    }


def print_comparison(old: dict, new: dict, tolerance: float) -> int:
    lines, worse = compare_results(old, new, tolerance)
    print("\n".join(lines))
    return 1 if worse else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_gss_shape(getattr(args, "gss_shape", None))
    if args.command == "peak-memory":
        print(json.dumps(measure_training_peak_memory(args.model, args.length, torch.device(args.device),
                                                      args.threads, args.memory_limit_mib, args.contenders_dir)))
        return 0
    if args.command == "compare":
        return print_comparison(json.loads(args.old.read_text()), json.loads(args.new.read_text()), args.tolerance)

    started = time.perf_counter()
    result = run_benchmarks(settings_from_args(args), log=lambda message: print(
        f"[bench {time.perf_counter() - started:6.1f} s] {message}", flush=True))
    markdown = to_markdown(result)
    print(markdown)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown)
    if args.compare:
        return print_comparison(json.loads(args.compare.read_text()), result, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
