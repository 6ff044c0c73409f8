"""The contract every SSM kernel keeps, whatever its structure (diagonal, DPLR, ...).

    y, state = kernel(u, state)        u: (batch, length, channels)

`state=None` is the training mode: the whole sequence at once (an FFT convolution), no state kept. With a state,
`u` continues the sequence the state summarises, one token (the recurrent step) or a chunk of any length, and the
updated state comes back. One pass == chunks with the state carried == token by token, for every kernel.

A kernel supplies `convolve`, `chunk`, `step` and `initial_state` on (batch, channels, length) tensors in its
compute precision; this class does the rest once: the precision policy (ops/precision.py: float32 under autocast
or with bf16 weights, float64 for a float64 model), the layout (time last, for the FFT), the skip term D ⊙ u,
and a cache of the step's coefficients while the parameters do not change. Everything outside `kernels/` sees
only this type: the optimizer's SSM group, the model's re-initialisation and the benchmark's FLOPs all key on it.

Options a kernel takes are its keyword arguments after `channels` and `state_size`, declared as a block's are
(options.py: `OPTIONS`, the defaults read from the signature, `check_options`); `kernels.check_options` validates a
config's `ssm_kernel_options` against them, and then the state size against them (`check_state_size`).

What the tests and the benchmark need of a kernel comes from its class too (docs/kernels.md, "Adding a
kernel"): the option variants that cover its code paths, the lengths where its own blocks end, its settings in the
tests' small models and at the benchmark's size, and `reference(u)`, its paper's formula written out naively.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..options import DeclaredOptions
from ..ops.precision import full_precision, ssm_dtype


class SSMKernel(nn.Module, DeclaredOptions):
    LEADING_ARGUMENTS = 2  # channels, state_size
    # An option that train.py sets to the training length (data.seq_len) when the config leaves it out.
    TRAINING_LENGTH_OPTION: ClassVar[str | None] = None
    # The state size when the config gives none (None: SSMLMConfig's default, 2H).
    DEFAULT_STATE_SIZE: ClassVar[int | None] = None

    # ---- what the tests and the benchmark take from the class ----
    # The option variants that between them run every code path; the invariant tests run each.
    EXAMPLE_OPTIONS: ClassVar[tuple[dict, ...]] = ({},)
    # Lengths at the kernel's own boundaries (where a block, a power of two or a normalisation length of the example
    # options ends), each at least 2, run besides random ones; none: the tests' default lengths only.
    BOUNDARY_LENGTHS: ClassVar[tuple[int, ...]] = ()
    # The length `reference` is checked at: long enough to pass every boundary that matters, short for its loops.
    REFERENCE_LENGTH: ClassVar[int] = 40
    # The float32 tolerance of one pass against chunks and steps where the default (1e-4 of the largest output)
    # is too tight for the kernel's rounding; float64 holds every kernel to 1e-10.
    FLOAT32_TOLERANCE: ClassVar[float | None] = None
    # SSMLMConfig fields for the tests' small models with this kernel (GSS over it); None where whole models with
    # it are tested elsewhere.
    EXAMPLE_MODEL_SETTINGS: ClassVar[dict | None] = {}
    # SSMLMConfig fields of the benchmark's GSS with this kernel (the paper's own state size and options), or None
    # for a kernel that is not a benchmark contender of its own.
    BENCHMARK_SETTINGS: ClassVar[dict | None] = None

    def __init__(self, channels: int, state_size: int):
        super().__init__()
        self.channels = channels
        self.state_size = state_size
        self.D = nn.Parameter(torch.empty(channels))  # the skip term D ⊙ u
        self._inference_cache = None  # (parameter versions, value): see inference_constant

    @classmethod
    def check_state_size(cls, state_size: int, options: dict) -> None:
        """Raise ValueError, naming the option, for a state size the options (every one, the defaults filled in)
        cannot serve."""

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def initial_state(self, batch_size: int):
        """The state before any token: a tensor or a tuple of tensors, batch first."""
        raise NotImplementedError

    def convolve(self, u: torch.Tensor) -> torch.Tensor:
        """The training mode: y of (batch, channels, length) from u of the same shape, no state."""
        raise NotImplementedError

    def chunk(self, u: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """A chunk of any length continuing from `state`: (y, the state after it)."""
        raise NotImplementedError

    def step(self, u: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """One token, u of (batch, channels): (y of (batch, channels), the next state)."""
        raise NotImplementedError

    def flops(self, tokens: int, cached: bool, batch: int) -> float:
        """FLOPs of one forward over `tokens` positions: continuing a state (`cached`, one token is a step) or
        the stateless training convolution. A multiply-add counts 2; elementwise work is not counted."""
        raise NotImplementedError

    def reference(self, u: torch.Tensor) -> torch.Tensor:
        """The output for u of (batch, length, channels), from the start, by the paper's defining formula written out
        naively (a loop over tokens or taps, helpers in reference.py): what the tests hold the fast paths to. Slow;
        for tests only, in float64 on the CPU."""
        raise NotImplementedError(
            f"{type(self).__name__} has no reference(u): a kernel must compute its output by its paper's defining "
            f"formula, written out naively, for the tests to check it against (docs/kernels.md, 'Adding a kernel "
            f"or a block')")

    # ---- the shared machinery ----

    def compute_dtype(self) -> torch.dtype:
        return ssm_dtype(self.D.dtype)

    def inference_constant(self, compute):
        """`compute()` (coefficients of the step), kept while no parameter or buffer changes when there is no
        autograd: generation steps once per token with fixed weights. An optimizer step or load_state_dict bumps a
        tensor's version, .to() gives it new storage; either makes it recompute. An edit through `.data`
        (`p.data.mul_(2)`) bumps no version, as it escapes autograd's checks too: it is not seen, and the steps go
        on with the old coefficients; edit parameters under torch.no_grad() instead (`p.mul_(2)`), as optimizers
        and load_state_dict do. Under torch.compile it is computed in the graph (versions and pointers do not
        trace), where the compiler fuses it."""
        if torch.compiler.is_compiling():
            return compute()
        # Gathered from each module's own tables: parameters() and buffers() walk the tree with a memo and names,
        # several times slower, and a decoding step asks once per block and token.
        tensors = [tensor for module in self.modules() for tensor in (*module._parameters.values(),
                                                                       *module._buffers.values()) if tensor is not None]
        if torch.is_grad_enabled() or any(t.is_inference() for t in tensors):  # inference tensors: no versions
            return compute()
        key = [(t.data_ptr(), t._version, t.dtype, t.device) for t in tensors]
        if self._inference_cache is None or self._inference_cache[0] != key:
            self._inference_cache = (key, compute())
        return self._inference_cache[1]

    def forward(self, u: torch.Tensor, state=None):
        input_dtype = u.dtype
        if state is not None and u.shape[1] == 1:  # the recurrent step: no layout to change
            with full_precision(u.device):
                u = u[:, 0].to(self.compute_dtype())
                y, state = self.step(u, state)
                y = torch.addcmul(y, self.D.to(u.dtype), u)
            return y.unsqueeze(1).to(input_dtype), state
        with full_precision(u.device):
            u = u.to(self.compute_dtype()).transpose(1, 2)  # (batch, channels, length): time last for the FFT
            if state is None:
                y = self.convolve(u)
            else:
                y, state = self.chunk(u, state)
            y = y + self.D.to(u.dtype).unsqueeze(-1) * u
        return y.transpose(1, 2).to(input_dtype), state
