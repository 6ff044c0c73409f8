"""The public implementations ours are measured against: installed apart from the project
(scripts/install_bench_contenders.sh), never required. One that is missing raises ContenderUnavailable, and the
harness reports it as skipped with the reason.

    GSSPort           lucidrains' gated-state-spaces-pytorch, run in the harness's process
    WorkerContender   transformers 4.x's Mega-chunk, run in a worker process of its own (start_legacy_mega)
"""

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import CausalLMOutput

from ..model.configuration import SSMLMConfig
from . import display_path
from .size import BATCH_SIZE, HIDDEN_SIZE, MEGA_CHUNK_SIZE, NUM_LAYERS, VOCAB_SIZE, count_parameters

LEGACY_MEGA_WORKER = Path(__file__).with_name("legacy_mega_worker.py")
INSTALL_HINT = "run scripts/install_bench_contenders.sh"


class ContenderUnavailable(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# lucidrains' GSS port.


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
    GSS's shape (F = dim_expansion_factor·d, H = dss_kernel_H, N = dss_kernel_N, from our GSS's SSMLMConfig), with
    the output projection tied to the embedding as ours is. forward takes the harness's keyword arguments and
    returns the causal LM loss (shifted cross-entropy) as transformers computes ours."""

    generation_unsupported = "not supported: no recurrent mode (the port only convolves over a whole sequence)"

    def __init__(self, port, config: SSMLMConfig):
        super().__init__()
        self.lm = port.GatedStateSpacesLM(
            num_tokens=config.vocab_size, dim=config.hidden_size, depth=config.num_hidden_layers,
            dim_expansion_factor=config.intermediate_size / config.hidden_size,
            dss_kernel_H=config.ssm_size, dss_kernel_N=config.ssm_state_size,
        )
        self.vocab_size = config.vocab_size
        self.untied_parameters = count_parameters(self.lm)
        self.lm.to_logits.weight = self.lm.token_emb.weight
        self.shape = {"dim_expansion_factor": config.intermediate_size / config.hidden_size,
                      "dss_kernel_H": config.ssm_size, "dss_kernel_N": config.ssm_state_size}
        self.implementation = f"gated-state-spaces-pytorch {importlib.metadata.version('gated-state-spaces-pytorch')}"

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **unused) -> CausalLMOutput:
        logits = self.lm(input_ids)
        loss = None if labels is None else ForCausalLMLoss(logits, labels, vocab_size=self.vocab_size)
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


# ----------------------------------------------------------------------------------------------------------------
# transformers 4.x's Mega-chunk, in a worker process.


class WorkerError(RuntimeError):
    pass


class WorkerContender:
    """A contender run in a worker process of its own, driven over JSON lines (the protocol is described in
    legacy_mega_worker.py): transformers 4.x's Mega cannot be imported beside transformers 5. A
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

    def training_step(self, length: int, batch_size: int = BATCH_SIZE) -> Callable[[], dict]:
        """The worker's training step at `length` (a fresh AdamW), prepared on the first call: the warmup."""
        prepared = []

        def step() -> dict:
            if not prepared:
                self.request("prepare", length=length, batch_size=batch_size)
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


def start_legacy_mega(contenders_dir: Path, device: torch.device, threads: int, target_parameters: int,
                      memory_limit_mib: int = 0) -> WorkerContender:
    """transformers 4.x's MegaForCausalLM as Mega-chunk (decoder-only, causal, chunks of MEGA_CHUNK_SIZE), its FFN
    width solved for `target_parameters`, in a worker with CONTENDERS_DIR/transformers4 first on its path."""
    directory = legacy_transformers_dir(contenders_dir)
    if not (directory / "transformers").is_dir():
        raise ContenderUnavailable(f"no transformers 4.x environment in {display_path(directory)}; {INSTALL_HINT}")
    paths = [str(directory)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    worker = WorkerContender([sys.executable, str(LEGACY_MEGA_WORKER)],
                             env=os.environ | {"PYTHONPATH": os.pathsep.join(paths)})
    try:
        worker.description = worker.request(
            "build", vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, num_layers=NUM_LAYERS,
            chunk_size=MEGA_CHUNK_SIZE, target_parameters=target_parameters, threads=threads,
            device=str(device), memory_limit_mib=memory_limit_mib)
    except MemoryError:
        worker.close()
        raise
    except Exception as error:
        worker.close()
        raise ContenderUnavailable(f"transformers 4.x in {display_path(directory)} did not build "
                                   f"MegaForCausalLM: {error}") from error
    return worker
